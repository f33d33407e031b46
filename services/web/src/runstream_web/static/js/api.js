// HTTP calls to the web service. Writes carry X-Requested-With (the service
// refuses writes without it) and, once signed in, the write token.

const TOKEN_KEY = "runstream.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function check(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch (_) { /* not JSON */ }
  throw new ApiError(response.status, message);
}

export async function getJSON(path) {
  const response = await check(await fetch(path, { headers: headers() }));
  return response.json();
}

export async function post(path, body) {
  const response = await check(await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", "X-Requested-With": "runstream" }),
    body: JSON.stringify(body),
  }));
  return response.json();
}

export const paths = {
  table: (p) => `/api/proposals/${p}/table`,
  events: (p, cursor) => `/api/proposals/${p}/events?since=${encodeURIComponent(cursor)}`,
  summary: (p, r, name, v) => `/api/proposals/${p}/runs/${r}/summary/${encodeURIComponent(name)}?v=${v}`,
  value: (p, r, name) => `/api/proposals/${p}/runs/${r}/values/${encodeURIComponent(name)}`,
  plot: (p, r, name) => `/api/proposals/${p}/runs/${r}/values/${encodeURIComponent(name)}/plot`,
  trend: (p, name) => `/api/proposals/${p}/variables/${encodeURIComponent(name)}/trend`,
  comment: (p, r) => `/api/proposals/${p}/runs/${r}/comment`,
  userVariables: (p) => `/api/proposals/${p}/user-variables`,
  reprocess: (p) => `/api/proposals/${p}/reprocess`,
};
