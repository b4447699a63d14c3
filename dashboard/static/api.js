// The collector's JSON API (collector/API.md). Cookie authentication; every
// mutation carries X-Errscope-Request so a cross-site form cannot forge it.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

let onUnauthorized = () => {};

/** Registers what to do when the session is missing or expired. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** A response boot.js already asked for (each is used once, by the first page). */
function takePrefetched(method, path) {
  const pre = window.__errscopePrefetch;
  if (method !== 'GET' || !pre || !pre[path]) return null;
  const p = pre[path];
  delete pre[path];
  return p;
}

export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET' && method !== 'HEAD') {
    headers['X-Errscope-Request'] = '1';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body ?? {});
  }
  let res;
  try {
    res = await (takePrefetched(method, path) || fetch(path, init));
  } catch (e) {
    throw new ApiError(0, 'The collector cannot be reached.');
  }
  if (res.status === 204) return null;
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const detail = data && typeof data.detail === 'string' ? data.detail : `HTTP ${res.status}`;
    const err = new ApiError(res.status, detail);
    if (res.status === 401 && !path.startsWith('/auth/')) onUnauthorized(err);
    throw err;
  }
  return data;
}

const get = (path) => request('GET', path);
const enc = encodeURIComponent;

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') u.set(k, v);
  }
  const s = u.toString();
  return s ? `?${s}` : '';
}

export const api = {
  login: (username, password) => request('POST', '/auth/login', { username, password }),
  logout: () => request('POST', '/auth/logout', {}),
  session: () => get('/api/0/session/'),
  projects: () => get('/api/0/projects/'),
  createProject: (name) => request('POST', '/api/0/projects/', { name }),
  stats: (pid) => get(`/api/0/projects/${enc(pid)}/stats/`),
  classes: (pid, status) => get(`/api/0/projects/${enc(pid)}/classes/${qs({ status })}`),
  issues: (pid, params) => get(`/api/0/projects/${enc(pid)}/issues/${qs(params)}`),
  issue: (id) => get(`/api/0/issues/${enc(id)}/`),
  setStatus: (id, status) => request('PUT', `/api/0/issues/${enc(id)}/`, { status }),
  issueEvents: (id, params) => get(`/api/0/issues/${enc(id)}/events/${qs(params)}`),
  event: (pid, eventId) => get(`/api/0/projects/${enc(pid)}/events/${enc(eventId)}/`),
  difs: (pid) => get(`/api/0/projects/errscope/${enc(pid)}/files/dsyms/`),
  deleteDif: (pid, id) => request('DELETE', `/api/0/projects/errscope/${enc(pid)}/files/dsyms/?id=${enc(id)}`),
  tagValues: (pid, key) => get(`/api/0/projects/${enc(pid)}/tags/${enc(key)}/values/`),
  alerts: (pid) => get(`/api/0/projects/${enc(pid)}/alerts/`),
  createAlert: (pid, rule) => request('POST', `/api/0/projects/${enc(pid)}/alerts/`, rule),
  updateAlert: (id, rule) => request('PUT', `/api/0/alerts/${enc(id)}/`, rule),
  deleteAlert: (id) => request('DELETE', `/api/0/alerts/${enc(id)}/`),
  testAlert: (id) => request('POST', `/api/0/alerts/${enc(id)}/test/`, {}),
  alertDeliveries: (id) => get(`/api/0/alerts/${enc(id)}/deliveries/`),
  releases: (pid, params) => get(`/api/0/projects/${enc(pid)}/releases/${qs(params)}`),
  // Teams and access, the issue workflow.
  me: () => get('/api/0/user/'),
  inviteInfo: (token) => get(`/auth/invite/${enc(token)}`),
  acceptInvite: (token, password) => request('POST', '/auth/invite/', { token, password }),
  changePassword: (current, next) => request('PUT', '/api/0/user/password/', { current_password: current, new_password: next }),
  tokens: () => get('/api/0/tokens/'),
  createToken: (name, scopes) => request('POST', '/api/0/tokens/', { name, scopes }),
  revokeToken: (id) => request('DELETE', `/api/0/tokens/${enc(id)}/`),
  sessions: () => get('/api/0/sessions/'),
  revokeSession: (id) => request('DELETE', `/api/0/sessions/${enc(id)}/`),
  users: () => get('/api/0/users/'),
  createUser: (user) => request('POST', '/api/0/users/', user),
  updateUser: (id, changes) => request('PUT', `/api/0/users/${enc(id)}/`, changes),
  reinvite: (id) => request('POST', `/api/0/users/${enc(id)}/invite/`, {}),
  audit: (before) => get(`/api/0/audit/${qs({ before, limit: 100 })}`),
  members: (pid) => get(`/api/0/projects/${enc(pid)}/members/`),
  assign: (id, assignee) => request('PUT', `/api/0/issues/${enc(id)}/assignee/`, { assignee }),
  comments: (id) => get(`/api/0/issues/${enc(id)}/comments/`),
  addComment: (id, body) => request('POST', `/api/0/issues/${enc(id)}/comments/`, { body }),
  deleteComment: (id, cid) => request('DELETE', `/api/0/issues/${enc(id)}/comments/${enc(cid)}/`),
};
