import { useEffect, useMemo, useState } from 'react'
import { get, query, type Json } from './api'
import { ALL } from './App'
import { age, between } from './format'
import { href, navigate, type Route } from './route'

const PHASES = ['Pending', 'Running', 'Succeeded', 'Failed', 'TimedOut', 'Cancelled']
const WINDOWS: Record<string, number> = { '1h': 3600, '24h': 86400, '7d': 7 * 86400 }
export const PAGE = 50

/** A User Timing mark, once per page load (the benchmark's first-paint figures). */
export function markOnce(name: string) {
  if (!performance.getEntriesByName(name, 'mark').length) performance.mark(name)
}
const REFRESH_MS = 3000 // the page's runs are read again this often (live phase and progress)

export function PhaseBadge({ phase }: { phase?: string }) {
  const p = phase ?? 'Pending'
  return <span className={`badge phase-${p}`} data-phase={p}>{p}</span>
}

export function Progress({ progress }: { progress?: string }) {
  const [done, total] = (progress ?? '0/0').split('/').map(Number)
  const pct = total ? Math.round((100 * done) / total) : 0
  return (
    <span className="progress" title={progress ?? ''}>
      <span className="bar"><span style={{ width: `${pct}%` }} /></span> {progress ?? '-'}
    </span>
  )
}

/** Runs of a namespace (or of all, for a caller who may list them all), one page at a time: the
 * API server's `continue` tokens, so the 10,000th run costs what the first does. Every filter is
 * sent to the API, which has the API server select before it cuts the page: a page is full. */
export function RunsPage({ namespace, route }: { namespace: string; route: Route }) {
  const p = route.params
  const filters = { workflow: p.get('workflow') ?? '', phase: p.get('phase') ?? '', label: p.get('label') ?? '',
    since: p.get('since') ?? '' }
  const [pages, setPages] = useState<string[]>(['']) // continue tokens of the pages seen: back is a pop
  const [items, setItems] = useState<Json[]>([])
  const [next, setNext] = useState<string | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [loaded, setLoaded] = useState(false)
  const cont = pages[pages.length - 1]
  const key = JSON.stringify([namespace, filters])

  useEffect(() => setPages(['']), [key])
  // a window's start is fixed when the filter is chosen, so the pages of one listing agree
  const createdAfter = useMemo(() => WINDOWS[filters.since]
    ? new Date(Date.now() - WINDOWS[filters.since] * 1000).toISOString() : undefined, [key]) // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    if (!namespace) return
    const ctl = new AbortController()
    const path = namespace === ALL ? '/executions' : `/namespaces/${namespace}/executions`
    const load = async () => {
      try {
        const page = await get(path + query({ workflow: filters.workflow || undefined, phase: filters.phase || undefined,
          labelSelector: filters.label || undefined, createdAfter, limit: PAGE, continue: cont || undefined }),
        ctl.signal)
        setItems(page.items)
        setNext(page.continue ?? null)
        setError(null)
      } catch (e) {
        if (!ctl.signal.aborted) setError((e as Error).message)
      } finally {
        if (!ctl.signal.aborted) setLoaded(true)
      }
    }
    void load()
    const timer = setInterval(load, REFRESH_MS)
    return () => { ctl.abort(); clearInterval(timer) }
  }, [key, cont]) // eslint-disable-line react-hooks/exhaustive-deps

  // User Timing marks (hack/bench/ui.py reads them): when the first page of runs is on screen
  useEffect(() => { if (loaded) markOnce('compozy:runs-rendered') }, [loaded])

  const setFilter = (name: string, value: string) =>
    navigate(['runs'], { ns: namespace, ...filters, [name]: value }, true)
  if (!namespace) return <p className="muted">You may not list runs in any namespace.</p>

  return (
    <section>
      <div className="toolbar">
        <h1>Runs</h1>
        <input aria-label="Workflow" placeholder="workflow" defaultValue={filters.workflow}
          onKeyDown={(e) => e.key === 'Enter' && setFilter('workflow', e.currentTarget.value.trim())}
          onBlur={(e) => e.currentTarget.value.trim() !== filters.workflow && setFilter('workflow', e.currentTarget.value.trim())} />
        <select aria-label="Phase" value={filters.phase} onChange={(e) => setFilter('phase', e.target.value)}>
          <option value="">any phase</option>
          {PHASES.map((ph) => <option key={ph}>{ph}</option>)}
        </select>
        <input aria-label="Label selector" placeholder="label selector, e.g. team=a" defaultValue={filters.label}
          onKeyDown={(e) => e.key === 'Enter' && setFilter('label', e.currentTarget.value.trim())}
          onBlur={(e) => e.currentTarget.value.trim() !== filters.label && setFilter('label', e.currentTarget.value.trim())} />
        <select aria-label="Started" value={filters.since} onChange={(e) => setFilter('since', e.target.value)}>
          <option value="">any time</option>
          {Object.keys(WINDOWS).map((w) => <option key={w} value={w}>last {w}</option>)}
        </select>
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      <table className="runs">
        <thead>
          <tr><th>Name</th>{namespace === ALL && <th>Namespace</th>}<th>Workflow</th><th>Phase</th><th>Progress</th>
            <th>Started</th><th>Duration</th><th>Message</th></tr>
        </thead>
        <tbody>
          {items.map((r) => {
            const st = r.status ?? {}
            return (
              <tr key={r.metadata.uid} data-run={r.metadata.name}>
                <td><a href={href(['runs', r.metadata.namespace, r.metadata.name])}>{r.metadata.name}</a></td>
                {namespace === ALL && <td>{r.metadata.namespace}</td>}
                <td>{st.workflow ?? r.spec?.workflowRef?.name ?? '-'}</td>
                <td><PhaseBadge phase={st.phase} /></td>
                <td><Progress progress={st.progress} /></td>
                <td title={st.startedAt ?? r.metadata.creationTimestamp}>{age(st.startedAt ?? r.metadata.creationTimestamp)}</td>
                <td>{st.duration ?? between(st.startedAt, st.finishedAt)}</td>
                <td className="message">{st.message ?? ''}</td>
              </tr>
            )
          })}
          {loaded && items.length === 0 && <tr><td colSpan={8} className="muted">No runs on this page.</td></tr>}
        </tbody>
      </table>
      <div className="pager">
        <button disabled={pages.length < 2} onClick={() => setPages(pages.slice(0, -1))}>Previous</button>
        <span className="muted">page {pages.length}</span>
        <button disabled={!next} onClick={() => next && setPages([...pages, next])}>Next</button>
      </div>
    </section>
  )
}
