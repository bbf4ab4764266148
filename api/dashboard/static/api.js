// The dashboard's only way to the server: the public REST API with the Bearer key.
// The key lives in sessionStorage (gone when the tab closes) and is never put in a URL.

const KEY = "alignd.apiKey";

export const auth = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set(key) {
    sessionStorage.setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || { code: "http_error", message: `HTTP ${status}` };
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.param = error.param;
    this.details = error.details || [];
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${auth.key}`, ...extra };
}

function unauthorized() {
  auth.clear();
  window.dispatchEvent(new CustomEvent("alignd:signed-out"));
}

async function parse(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: { code: "http_error", message: text.slice(0, 300) } };
  }
}

/** JSON request to the API; throws ApiError with the server's error object on any non-2xx. */
export async function api(path, { method = "GET", body, signal, extraHeaders = {} } = {}) {
  const h = headers(extraHeaders);
  let payload;
  if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers: h, body: payload, signal });
  const data = await parse(response);
  if (response.status === 401) unauthorized();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** A multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${auth.key}`);
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : null);
    xhr.onload = () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        data = { error: { code: "http_error", message: xhr.responseText.slice(0, 300) } };
      }
      if (xhr.status === 401) unauthorized();
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data));
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { code: "network", message: "network error" } }));
    xhr.send(form);
  });
}

/**
 * Server-Sent Events over fetch (EventSource cannot send the Authorization header).
 * Yields {id, event, data} with data parsed as JSON; resumes after `lastEventId`.
 */
export async function* sse(path, { signal, lastEventId } = {}) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
  if (!response.ok) {
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, await parse(response));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (!done) buffer += value;
    let start = 0;
    const lineEnd = /\r\n|\r|\n/g;
    let m;
    while ((m = lineEnd.exec(buffer)) !== null) {
      // a \r at the end of what arrived may be half of a \r\n: wait for more, unless the stream ended
      if (m[0] === "\r" && m.index === buffer.length - 1 && !done) break;
      const line = buffer.slice(start, m.index);
      start = m.index + m[0].length;
      if (line === "") {
        if (event.data.length) {
          const text = event.data.join("\n");
          let data = text;
          try {
            data = JSON.parse(text);
          } catch {
            /* not JSON: keep the text */
          }
          yield { id: event.id, event: event.event, data };
        }
        event = { id: event.id, event: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") event.data.push(val);
        else if (field === "event") event.event = val;
        else if (field === "id") event.id = val;
      }
    }
    buffer = buffer.slice(start);
    if (done) return; // an event without its blank line is dropped, as EventSource does
  }
}

/** Download with the Bearer header: fetch -> blob -> a temporary object URL clicked as a link. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, await parse(response));
  }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { bytes: blob.size, sha256: response.headers.get("X-Checkpoint-SHA256") };
}
