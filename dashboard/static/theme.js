// Applies the stored colour theme before the first paint (a classic, blocking
// script: the CSP forbids inline scripts, so this lives in its own file).
(function () {
  try {
    var t = localStorage.getItem('errscope.theme');
    if (t === 'light' || t === 'dark') document.documentElement.setAttribute('data-theme', t);
  } catch (e) { /* storage unavailable: follow the system */ }
})();
