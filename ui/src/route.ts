// Hash routes (`#/runs/<ns>/<name>?task=x`): the UI is static files, any path of it reloads.
import { useEffect, useState } from 'react'

export interface Route { path: string[]; params: URLSearchParams }

export function parseHash(hash: string): Route {
  const [path, q] = hash.replace(/^#\/?/, '').split('?', 2)
  return { path: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q ?? '') }
}

export function href(path: string[], params: Record<string, string | undefined | null> = {}): string {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v)
  const s = q.toString()
  return `#/${path.map(encodeURIComponent).join('/')}${s ? `?${s}` : ''}`
}

export function navigate(path: string[], params: Record<string, string | undefined | null> = {}, replace = false) {
  const target = href(path, params)
  if (replace) history.replaceState(null, '', target)
  else location.hash = target
  if (replace) window.dispatchEvent(new HashChangeEvent('hashchange'))
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(location.hash))
  useEffect(() => {
    const on = () => setRoute(parseHash(location.hash))
    window.addEventListener('hashchange', on)
    return () => window.removeEventListener('hashchange', on)
  }, [])
  return route
}
