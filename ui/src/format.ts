// Small display helpers shared by the pages.
export function age(iso?: string | null, now = Date.now()): string {
  if (!iso) return '-'
  return span((now - Date.parse(iso)) / 1000) + ' ago'
}

export function span(seconds: number): string {
  if (!isFinite(seconds) || seconds < 0) return '-'
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`
  const m = Math.floor(seconds / 60)
  if (m < 60) return `${m}m${Math.floor(seconds % 60)}s`
  return `${Math.floor(m / 60)}h${m % 60}m`
}

export function between(start?: string | null, end?: string | null, now = Date.now()): string {
  if (!start) return '-'
  return span(((end ? Date.parse(end) : now) - Date.parse(start)) / 1000)
}

export const pretty = (v: unknown): string => JSON.stringify(v, null, 2)
