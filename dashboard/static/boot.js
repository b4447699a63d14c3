// Runs before the modules, as a classic script in <head> (the CSP forbids
// inline scripts, so this lives in its own file):
// - applies the stored colour theme before the first paint;
// - starts the two requests every signed-in page begins with, so they travel
//   while the modules load (api.js picks the responses up).
(function () {
  try {
    var t = localStorage.getItem('errscope.theme');
    if (t === 'light' || t === 'dark') document.documentElement.setAttribute('data-theme', t);
  } catch (e) { /* storage unavailable: follow the system */ }
  if (!window.fetch || location.pathname === '/login') return;
  var get = function (path) {
    return fetch(path, { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
  };
  window.__errscopePrefetch = {
    '/api/0/session/': get('/api/0/session/'),
    '/api/0/projects/': get('/api/0/projects/'),
  };
})();
