// The registry's JSON API, called with the pasted key as a bearer header (never a cookie).

const KEY = "ckpt-registry.key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

function detailOf(body, fallback) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((item) => `${(item.loc || []).join(".")}: ${item.msg}`).join("; ");
  }
  return fallback;
}

export function apiUrl(path, query = {}) {
  const url = new URL("/v1" + path, window.location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url;
}

export async function request(path, { method = "GET", query = {}, body } = {}) {
  const headers = { Authorization: `Bearer ${key.get() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, `The registry did not answer (${error.message}).`);
  }
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, detailOf(parsed, response.statusText || "Request failed"));
  }
  return response.status === 204 ? null : response.json();
}

// A file's bytes need the bearer header too, so a plain link cannot download them: fetch the blob
// and hand it to the browser as a download.
export async function download(path, filename) {
  const response = await fetch(apiUrl(path), {
    headers: { Authorization: `Bearer ${key.get() || ""}` },
    credentials: "omit",
  });
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      // keep the status text
    }
    throw new ApiError(response.status, detailOf(parsed, response.statusText));
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export const models = {
  list: (query) => request("/preview/models", { query }),
  get: (id) => request(`/preview/models/${encodeURIComponent(id)}`),
  summary: (id) => request(`/preview/models/${encodeURIComponent(id)}/summary`),
};

const base = (id) => `/preview/models/${encodeURIComponent(id)}/checkpoints`;

export const checkpoints = {
  list: (modelId, query) => request(base(modelId), { query }),
  get: (modelId, id) => request(`${base(modelId)}/${encodeURIComponent(id)}`),
  atStep: (modelId, step) => request(`${base(modelId)}/steps/${step}`),
  best: (modelId, metric, mode) => request(`${base(modelId)}/best`, { query: { metric, mode } }),
  series: (modelId, query) => request(`${base(modelId)}/series`, { query }),
  metricNames: (modelId, query) => request(`${base(modelId)}/metrics`, { query }),
  remove: (modelId, steps) => request(base(modelId), { method: "DELETE", body: { steps } }),
  retention: (modelId, body) => request(`${base(modelId)}/retention`, { method: "POST", body }),
  files: (modelId, id, query) => request(`${base(modelId)}/${encodeURIComponent(id)}/files`, { query }),
  filePath: (modelId, id, path) =>
    `${base(modelId)}/${encodeURIComponent(id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`,
};

// Whether the key may write. A server without `GET /v1/preview/key` (404) predates read-only keys:
// every key there can write.
export async function keyInfo() {
  try {
    return await request("/preview/key");
  } catch (error) {
    if (error.status === 404) return { entity: null, read_only: false };
    throw error;
  }
}
