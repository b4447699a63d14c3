// Runs before the modules, as a classic script in <head> (the CSP forbids
// inline scripts, so this lives in its own file):
// - applies the stored colour theme before the first paint;
// - preloads this page's module alongside the shared ones (app.js imports it
//   on demand);
// - starts the two requests every signed-in page begins with, so they travel
//   while the modules load (api.js picks the responses up).
(function () {
  try {
    var t = localStorage.getItem('errscope.theme');
    if (t === 'light' || t === 'dark') document.documentElement.setAttribute('data-theme', t);
  } catch (e) { /* storage unavailable: follow the system */ }
  var path = location.pathname;
  var page = path === '/' ? ['classes']
    : /^\/issues\/?$/.test(path) || /^\/classes\//.test(path) ? ['issues']
      : /^\/issues\/\d+/.test(path) ? ['issue', 'event']
        : /^\/projects\/?$/.test(path) ? ['projects']
          : /^\/login\/?$/.test(path) ? ['login'] : [];
  for (var i = 0; i < page.length; i++) {
    var link = document.createElement('link');
    link.rel = 'modulepreload';
    link.href = '/assets/views/' + page[i] + '.js';
    document.head.appendChild(link);
  }
  if (!window.fetch || /^\/(login|invite)\b/.test(path)) return;
  var get = function (path) {
    return fetch(path, { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
  };
  window.__errscopePrefetch = {
    '/api/0/user/': get('/api/0/user/'),
    '/api/0/projects/': get('/api/0/projects/'),
  };
})();
