// The public API (docs/api.md), with the bearer token the user signed in with. Nothing else:
// the UI can do exactly what its user could do with curl.

export type Json = any // eslint-disable-line @typescript-eslint/no-explicit-any

const TOKEN_KEY = 'compozy.token'
const BASE = '/api/v1'

export class ApiError extends Error {
  constructor(public status: number, public reason: string, message: string, public field?: string) {
    super(message)
  }
}

/** The token lives in sessionStorage: gone with the tab, never sent as a cookie (no CSRF). */
export const token = {
  get: (): string | null => sessionStorage.getItem(TOKEN_KEY),
  set: (t: string) => sessionStorage.setItem(TOKEN_KEY, t.trim()),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
}

/** Every call says it is the UI's: with an OIDC sign-in (an HttpOnly cookie) api.Service takes a
 * call that changes something only with this header, which another site cannot send. */
function headers(extra: Record<string, string> = {}): Record<string, string> {
  const t = token.get()
  const own = { ...extra, 'X-Compozy-Request': 'ui' }
  return t ? { ...own, Authorization: `Bearer ${t}` } : own
}

async function failure(resp: Response): Promise<ApiError> {
  try {
    const body = await resp.json()
    const e = body?.error ?? {}
    return new ApiError(resp.status, e.reason ?? 'Error', e.message ?? resp.statusText, e.field)
  } catch {
    return new ApiError(resp.status, 'Error', resp.statusText)
  }
}

export async function call(method: string, path: string, body?: Json, signal?: AbortSignal): Promise<Json> {
  const resp = await fetch(BASE + path, {
    method,
    headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  })
  if (!resp.ok) throw await failure(resp)
  return resp.json()
}

export const get = (path: string, signal?: AbortSignal) => call('GET', path, undefined, signal)

/** The sign-in endpoints, beside the API (`/oauth2/...`). */
export async function signInOptions(): Promise<{ oidc: boolean; localUser: boolean }> {
  const resp = await fetch('/oauth2/config')
  return resp.ok ? resp.json() : { oidc: false, localUser: false }
}

export const signOut = () => fetch('/oauth2/logout', { method: 'POST', headers: headers() })

export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v))
  const s = q.toString()
  return s ? `?${s}` : ''
}

/** A streamed answer's text, chunk by chunk, until it ends or `signal` aborts. EventSource cannot
 * send an Authorization header, so both SSE and log streams are read with fetch. */
async function* chunks(path: string, signal: AbortSignal, extra: Record<string, string> = {}): AsyncGenerator<string> {
  const resp = await fetch(BASE + path, { headers: headers(extra), signal })
  if (!resp.ok || !resp.body) throw await failure(resp)
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader()
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return
      yield value
    }
  } finally {
    reader.releaseLock()
  }
}

export interface StateEvent { id: number; type: string; data: Json; time: string }

/** The run's state events (SSE), from `after` (a reconnect's Last-Event-ID) on. */
export async function* events(ns: string, name: string, signal: AbortSignal, after?: number): AsyncGenerator<StateEvent> {
  let buffer = ''
  const extra: Record<string, string> = after !== undefined ? { 'Last-Event-ID': String(after) } : {}
  for await (const chunk of chunks(`/namespaces/${ns}/executions/${name}/events`, signal, extra)) {
    buffer += chunk
    let end: number
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      const fields: Record<string, string> = {}
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue
        const i = line.indexOf(': ')
        if (i > 0) fields[line.slice(0, i)] = line.slice(i + 2)
      }
      if (fields.data === undefined) continue
      const event = JSON.parse(fields.data)
      yield { id: Number(fields.id), type: fields.event ?? event.type, data: event.data ?? {}, time: event.time }
    }
  }
}

/** The run's log lines (text), followed while `follow`. */
export async function* logLines(ns: string, name: string, task: string | null, follow: boolean,
  signal: AbortSignal): AsyncGenerator<string[]> {
  let buffer = ''
  const path = `/namespaces/${ns}/executions/${name}/logs${query({ task, follow: follow ? 'true' : undefined })}`
  for await (const chunk of chunks(path, signal)) {
    buffer += chunk
    const cut = buffer.lastIndexOf('\n')
    if (cut < 0) continue
    yield buffer.slice(0, cut).split('\n')
    buffer = buffer.slice(cut + 1)
  }
  if (buffer) yield [buffer]
}

export interface Access { [resource: string]: { [verb: string]: boolean } }

export const can = (access: Access | null, resource: string, verb: string): boolean =>
  !!access?.[resource]?.[verb]
