import { useCallback, useEffect, useMemo, useRef, useState } from 'react'
import { stringify } from 'yaml'
import { call, can, events, get, logLines, type Access, type Json } from './api'
import { collectionChildren, phaseAfter, rank, TERMINAL } from './graph'
import { between, pretty, span } from './format'
import { GraphView } from './GraphView'
import { href, navigate, type Route } from './route'
import { PhaseBadge, Progress } from './RunsPage'

const REFETCH_MS = 500 // after a state event, the status is read again at most this often
const MAX_LOG_LINES = 5000

type Tab = 'graph' | 'timeline' | 'logs' | 'yaml'
const TAB_NAMES: Record<Tab, string> = { graph: 'Graph', timeline: 'Timeline', logs: 'Logs', yaml: 'YAML' }

/** The Workflow spec the run runs: its snapshot, the inline spec, or (a large snapshot is in the
 * object store) the Workflow it names as it is now. */
function useSpec(ns: string, run: Json | null): Json | null {
  const [fetched, setFetched] = useState<Json | null>(null)
  const snapshot = run?.status?.snapshot?.spec ?? run?.spec?.workflow ?? null
  const ref = run?.spec?.workflowRef?.name
  useEffect(() => {
    if (snapshot || !ref) return
    get(`/namespaces/${ns}/workflows/${ref}`).then((wf) => setFetched(wf.spec), () => setFetched(null))
  }, [ns, ref, !!snapshot]) // eslint-disable-line react-hooks/exhaustive-deps
  return snapshot ?? fetched
}

export function RunPage({ namespace, name, route }: { namespace: string; name: string; route: Route }) {
  const [run, setRun] = useState<Json | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [live, setLive] = useState<Record<string, Json>>({}) // phases from events newer than the status
  const [access, setAccess] = useState<Access | null>(null)
  const [notice, setNotice] = useState<string | null>(null)
  const tab = (route.params.get('tab') as Tab | null) ?? 'graph'
  const selected = route.params.get('task')
  const spec = useSpec(namespace, run)

  const load = useCallback(async () => {
    try {
      const r = await get(`/namespaces/${namespace}/executions/${name}`)
      setRun(r)
      setLive((l) => pruneLive(l, r.status?.tasks ?? {}))
      setError(null)
    } catch (e) {
      setError((e as Error).message)
    }
  }, [namespace, name])

  useEffect(() => { void load() }, [load])
  useEffect(() => {
    get(`/namespaces/${namespace}/access`).then((a) => setAccess(a.resources), () => setAccess(null))
  }, [namespace])

  // The event stream: every state event colours its node at once, then the status is read again
  // (throttled) for the rest. The stream ends with the run; it is opened again after the last
  // event seen when it breaks while the run goes on, or when a retry makes an ended run go on.
  const statusTasks = useRef<Record<string, Json>>({})
  statusTasks.current = run?.status?.tasks ?? {}
  const lastEvent = useRef<number | undefined>(undefined)
  const [round, setRound] = useState(0)
  useEffect(() => {
    const ctl = new AbortController()
    let timer: ReturnType<typeof setTimeout> | null = null
    const refetch = () => { timer ??= setTimeout(() => { timer = null; void load() }, REFETCH_MS) }
    const follow = async () => {
      for (let attempt = 0; !ctl.signal.aborted; attempt++) {
        try {
          for await (const ev of events(namespace, name, ctl.signal, lastEvent.current)) {
            lastEvent.current = ev.id
            const task = ev.data?.task
            if (typeof task === 'string') {
              setLive((l) => {
                const next = phaseAfter(l[task] ?? statusTasks.current[task], ev.type, ev.data)
                return next ? { ...l, [task]: { phase: next, attempt: Number(ev.data?.attempt ?? 1) } } : l
              })
            }
            refetch()
          }
          const r = await get(`/namespaces/${namespace}/executions/${name}`)
          if (TERMINAL.has(r.status?.phase)) return // ended: the stream closed after its last event
        } catch {
          if (ctl.signal.aborted) return
        }
        await new Promise((r) => setTimeout(r, Math.min(10_000, 1000 * 2 ** Math.min(attempt, 3))))
      }
    }
    void follow()
    return () => { ctl.abort(); if (timer) clearTimeout(timer) }
  }, [namespace, name, load, round])

  const tasks = useMemo(() => merged(run?.status?.tasks ?? {}, live), [run, live])
  const setParam = (k: string, v: string | null) => {
    const params: Record<string, string | null> = { tab, task: selected, [k]: v }
    navigate(['runs', namespace, name], params, true)
  }

  const act = async (what: 'cancel' | 'retry' | 'resubmit') => {
    try {
      const answer = await call('POST', `/namespaces/${namespace}/executions/${name}/${what}`, what === 'resubmit' ? {} : undefined)
      if (what === 'resubmit') navigate(['runs', namespace, answer.name])
      else { setNotice(answer.message); void load(); if (what === 'retry') setRound((r) => r + 1) }
    } catch (e) {
      setNotice((e as Error).message)
    }
  }

  if (error && !run) return <p className="error" role="alert">{error}</p>
  if (!run) return <p className="muted">Loading…</p>
  const st = run.status ?? {}
  const ended = TERMINAL.has(st.phase)
  const retryable = ended && st.phase !== 'Succeeded'
  const mayPatch = can(access, 'workflowexecutions', 'patch')
  const mayResubmit = can(access, 'workflowexecutions', 'create') && can(access, 'workflowexecutions', 'get')

  return (
    <section className="run">
      <div className="run-head">
        <div>
          <h1>{name} <PhaseBadge phase={st.phase} /></h1>
          <div className="muted">
            {namespace} · workflow{' '}
            {run.spec?.workflowRef?.name
              ? <a href={href(['workflows', namespace, run.spec.workflowRef.name])}>{run.spec.workflowRef.name}</a>
              : '<inline>'}
            {' '}· <Progress progress={st.progress} /> · {st.duration ?? between(st.startedAt, st.finishedAt)}
            {st.usage && <> · {st.usage.inputTokens + st.usage.outputTokens} tokens, {st.usage.modelCalls} model calls</>}
          </div>
          {st.message && <div className={st.error ? 'error' : 'muted'} data-testid="run-message">{st.message}</div>}
        </div>
        <div className="actions" data-access={access ? 'known' : 'unknown'}>
          {mayPatch && !ended && <button className="danger" onClick={() => act('cancel')}>Cancel</button>}
          {mayPatch && retryable && <button onClick={() => act('retry')}>Retry</button>}
          {mayResubmit && <button onClick={() => act('resubmit')}>Resubmit</button>}
        </div>
      </div>
      {notice && <p className="notice" role="status">{notice}</p>}
      <div className="tabs" role="tablist">
        {(['graph', 'timeline', 'logs', 'yaml'] as Tab[]).map((t) => (
          <button key={t} role="tab" aria-selected={tab === t} className={tab === t ? 'active' : ''}
            onClick={() => setParam('tab', t)}>{TAB_NAMES[t]}</button>
        ))}
      </div>
      <div className="run-body">
        <div className="run-main">
          {tab === 'graph' && (spec ? <GraphView spec={spec} tasks={tasks} selected={selected}
            onSelect={(id) => setParam('task', id)} /> : <p className="muted">The workflow spec is not available.</p>)}
          {tab === 'timeline' && <Timeline tasks={tasks} onSelect={(id) => setParam('task', id)} />}
          {tab === 'logs' && <LogsPane namespace={namespace} name={name} task={selected} ended={ended}
            tasks={Object.keys(tasks)} onTask={(t) => setParam('task', t)} />}
          {tab === 'yaml' && <pre className="yaml" data-testid="yaml">{stringify(run)}</pre>}
        </div>
        {selected && tab !== 'logs' && (
          <TaskPanel namespace={namespace} name={name} id={selected} spec={spec} status={tasks[selected]}
            children={collectionChildren(tasks).get(selected) ?? []} onClose={() => setParam('task', null)}
            onSelect={(id) => setParam('task', id)} onLogs={() => setParam('tab', 'logs')} />
        )}
      </div>
    </section>
  )
}

/** The status's tasks with the phases of events newer than it. */
function merged(tasks: Record<string, Json>, live: Record<string, Json>): Record<string, Json> {
  const keys = Object.keys(live)
  if (!keys.length) return tasks
  const out = { ...tasks }
  for (const k of keys) out[k] = { ...(tasks[k] ?? {}), phase: live[k].phase, attempt: live[k].attempt }
  return out
}

/** Live phases the status has caught up with are dropped (the status has the whole truth). */
function pruneLive(live: Record<string, Json>, tasks: Record<string, Json>): Record<string, Json> {
  const out: Record<string, Json> = {}
  for (const [k, v] of Object.entries(live)) {
    const t = tasks[k]
    const ahead = !t || (t.attempt ?? 1) < v.attempt || ((t.attempt ?? 1) === v.attempt && rank(v.phase) > rank(t.phase))
    if (ahead) out[k] = v
  }
  return out
}

function findTask(spec: Json, id: string): Json | null {
  const base = id.replace(/\[\d+\]$/, '')
  const walk = (tasks: Json[] | undefined): Json | null => {
    for (const t of tasks ?? []) {
      if (t?.id === base) return base === id ? t : t.task ?? t
      const inner = walk(t?.tasks) ?? (t?.task ? walk([t.task]) : null)
      if (inner) return inner
    }
    return null
  }
  return walk(spec?.tasks)
}

/** One attempt as api.Service records it (`/attempt`): its rendered input and an agent's model calls.
 * Read again when the attempt changes or ends (the calls are reported at its end). */
function useAttempt(namespace: string, name: string, id: string, st: Json, wanted: boolean) {
  const [detail, setDetail] = useState<{ value?: Json; error?: string } | null>(null)
  const ended = TERMINAL.has(st.phase)
  const load = useCallback((stored = false) => {
    const q = `task=${encodeURIComponent(id)}&attempt=${st.attempt ?? 1}${stored ? '&stored=true' : ''}`
    return get(`/namespaces/${namespace}/executions/${name}/attempt?${q}`)
      .then((value) => setDetail({ value }), (e) => setDetail({ error: (e as Error).message }))
  }, [namespace, name, id, st.attempt])
  useEffect(() => {
    setDetail(null)
    if (wanted && st.phase && st.phase !== 'Waiting') void load()
  }, [load, wanted, ended, !!st.phase]) // eslint-disable-line react-hooks/exhaustive-deps
  return { detail, fetchStored: () => load(true) }
}

function ModelCalls({ calls }: { calls: Json[] }) {
  return (
    <table className="attempts" data-testid="model-calls">
      <thead><tr><th>#</th><th>Model</th><th>Tokens in / out</th><th>Took</th><th>Finish</th><th>Tools requested</th></tr></thead>
      <tbody>
        {calls.map((c: Json, i: number) => (
          <tr key={i}>
            <td>{i + 1}</td><td>{c.model ?? '-'}</td><td>{c.inputTokens ?? '-'} / {c.outputTokens ?? '-'}</td>
            <td>{c.seconds == null ? '-' : span(c.seconds)}</td><td>{c.finishReason ?? '-'}</td>
            <td>{c.toolCalls?.length ? c.toolCalls.join(', ') : '-'}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

function TaskPanel({ namespace, name, id, spec, status, children, onClose, onSelect, onLogs }: {
  namespace: string; name: string; id: string; spec: Json; status: Json | undefined; children: [string, Json][]
  onClose: () => void; onSelect: (id: string) => void; onLogs: () => void
}) {
  const [stored, setStored] = useState<{ value?: Json; error?: string } | null>(null)
  const [filter, setFilter] = useState('')
  useEffect(() => setStored(null), [id])
  const task = findTask(spec, id)
  const st = status ?? {}
  const loadOutput = () => get(`/namespaces/${namespace}/executions/${name}/output?task=${encodeURIComponent(id)}`)
    .then((value) => setStored({ value }), (e) => setStored({ error: (e as Error).message }))
  const shownChildren = children.filter(([, c]) => !filter || c.phase === filter)
  const { detail, fetchStored } = useAttempt(namespace, name, id, st, !!(task?.tool || task?.agent))
  const rendered = detail?.value?.rendered
  return (
    <aside className="panel" aria-label={`Task ${id}`} data-testid="task-panel">
      <div className="panel-head">
        <h2>{id} <PhaseBadge phase={st.phase ?? 'NotStarted'} /></h2>
        <button className="ghost" onClick={onClose} aria-label="Close">×</button>
      </div>
      <dl className="facts">
        <dt>Type</dt><dd>{task?.type ?? 'basic'}{task?.tool ? ` · tool ${task.tool}` : ''}{task?.agent ? ` · agent ${task.agent}.${task.action ?? ''}` : ''}</dd>
        <dt>Attempt</dt><dd>{st.attempt ?? '-'}{st.priorAttempts ? ` (+${st.priorAttempts} in earlier rounds)` : ''}</dd>
        <dt>Pod</dt><dd>{st.podName ?? '-'}</dd>
        <dt>Queued</dt><dd>{between(st.dispatchedAt, st.startedAt)}</dd>
        <dt>Ran</dt><dd>{between(st.startedAt, st.finishedAt)}</dd>
        {st.usage && <><dt>Tokens</dt><dd>{st.usage.inputTokens} in · {st.usage.outputTokens} out · {st.usage.modelCalls} model calls</dd></>}
        {st.message && <><dt>Waiting</dt><dd>{st.message}</dd></>}
      </dl>
      <button onClick={onLogs}>Logs of {id}</button>
      {st.error && (
        <>
          <h3>Error</h3>
          <pre className="error" data-testid="task-error">{st.error.reason}: {st.error.message}</pre>
        </>
      )}
      {rendered && (
        <>
          <h3>Input (rendered, attempt {detail?.value?.attempt})</h3>
          <pre data-testid="task-input">{pretty(rendered.input ?? null)}</pre>
          {rendered.prompt !== undefined && <><h3>Prompt (rendered)</h3><pre data-testid="task-prompt">{rendered.prompt}</pre></>}
        </>
      )}
      {!rendered && detail?.value?.renderedSize != null && (
        <>
          <h3>Input (rendered, stored, {detail.value.renderedSize} bytes)</h3>
          <button onClick={fetchStored}>Fetch input</button>
        </>
      )}
      {detail?.error && <p className="error">{detail.error}</p>}
      {task?.with !== undefined && (
        <details open={!rendered}><summary>Input (template)</summary><pre>{pretty(task.with)}</pre></details>
      )}
      {detail?.value?.modelCalls?.length > 0 && (
        <><h3>Model calls (attempt {detail?.value?.attempt})</h3><ModelCalls calls={detail!.value.modelCalls} /></>
      )}
      {st.output !== undefined && st.output !== null && <><h3>Output</h3><pre data-testid="task-output">{pretty(st.output)}</pre></>}
      {st.outputRef && (
        <>
          <h3>Output (stored, {st.outputRef.size} bytes)</h3>
          {stored?.value !== undefined ? <pre data-testid="task-output">{pretty(stored.value)}</pre>
            : <button onClick={loadOutput}>Fetch output</button>}
          {stored?.error && <p className="error">{stored.error}</p>}
        </>
      )}
      {st.attempts?.length > 0 && (
        <>
          <h3>Earlier attempts</h3>
          <table className="attempts">
            <thead><tr><th>#</th><th>Phase</th><th>Pod</th><th>Ran</th><th>Reason</th></tr></thead>
            <tbody>
              {st.attempts.map((a: Json) => (
                <tr key={a.attempt}>
                  <td>{a.attempt}</td><td><PhaseBadge phase={a.phase} /></td><td>{a.podName ?? '-'}</td>
                  <td>{between(a.startedAt, a.finishedAt)}</td>
                  <td title={a.error?.message}>{a.error ? `${a.error.reason}: ${a.error.message}` : ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {task?.type === 'collection' && (
        <>
          <h3>Items ({children.length})</h3>
          <select aria-label="Item phase" value={filter} onChange={(e) => setFilter(e.target.value)}>
            <option value="">every phase</option>
            {[...new Set(children.map(([, c]) => c.phase))].map((p) => <option key={p}>{p}</option>)}
          </select>
          <ul className="children">
            {shownChildren.slice(0, 500).map(([key, c]) => (
              <li key={key}><button className="link" onClick={() => onSelect(key)}>{key}</button> <PhaseBadge phase={c.phase} /></li>
            ))}
            {shownChildren.length > 500 && <li className="muted">… {shownChildren.length - 500} more</li>}
          </ul>
        </>
      )}
    </aside>
  )
}

/** Attempts on a time axis (a Gantt chart): queued (dispatched) and running parts of each. */
function Timeline({ tasks, onSelect }: { tasks: Record<string, Json>; onSelect: (id: string) => void }) {
  const now = Date.now()
  const rows: { key: string; task: string; attempt: number; phase: string; from: number; start: number; end: number }[] = []
  for (const [task, t] of Object.entries(tasks)) {
    for (const a of [...(t.attempts ?? []), t]) {
      const from = Date.parse(a.dispatchedAt ?? a.startedAt ?? '')
      if (!isFinite(from)) continue
      const start = Date.parse(a.startedAt ?? '') || from
      const end = Date.parse(a.finishedAt ?? '') || now
      if (a === t && t.attempts?.some((r: Json) => r.attempt === t.attempt)) continue
      rows.push({ key: `${task}#${a.attempt}`, task, attempt: a.attempt ?? 1, phase: a.phase, from, start, end })
    }
  }
  if (!rows.length) return <p className="muted">No attempt has started yet.</p>
  rows.sort((a, b) => a.from - b.from)
  const t0 = Math.min(...rows.map((r) => r.from))
  const t1 = Math.max(...rows.map((r) => r.end), t0 + 1)
  const pct = (t: number) => `${(100 * (t - t0)) / (t1 - t0)}%`
  return (
    <div className="timeline" data-testid="timeline">
      <div className="muted">{between(new Date(t0).toISOString(), new Date(t1).toISOString())} in all</div>
      {rows.slice(0, 2000).map((r) => (
        <div className="tl-row" key={r.key}>
          <button className="link tl-name" onClick={() => onSelect(r.task)}>{r.task} #{r.attempt}</button>
          <div className="tl-track">
            <span className="tl-queued" style={{ left: pct(r.from), width: `calc(${pct(r.start)} - ${pct(r.from)})` }} />
            <span className={`tl-bar phase-${r.phase}`} title={`${r.phase} ${between(new Date(r.start).toISOString(), new Date(r.end).toISOString())}`}
              style={{ left: pct(r.start), width: `max(2px, calc(${pct(r.end)} - ${pct(r.start)}))` }} />
          </div>
        </div>
      ))}
    </div>
  )
}

function LogsPane({ namespace, name, task, ended, tasks, onTask }: {
  namespace: string; name: string; task: string | null; ended: boolean; tasks: string[]; onTask: (t: string | null) => void
}) {
  const [lines, setLines] = useState<string[]>([])
  const [follow, setFollow] = useState(!ended)
  const [requests, setRequests] = useState(false) // api.Service's own lines: each API call on the run, this page's too
  const [error, setError] = useState<string | null>(null)
  const bottom = useRef<HTMLDivElement>(null)
  useEffect(() => {
    const ctl = new AbortController()
    setLines([])
    setError(null)
    ;(async () => {
      try {
        for await (const batch of logLines(namespace, name, task, follow, ctl.signal)) {
          setLines((l) => [...l, ...batch].slice(-MAX_LOG_LINES))
        }
      } catch (e) {
        if (!ctl.signal.aborted) setError((e as Error).message)
      }
    })()
    return () => ctl.abort()
  }, [namespace, name, task, follow])
  useEffect(() => { if (follow) bottom.current?.scrollIntoView({ block: 'end' }) }, [lines, follow])
  return (
    <div className="logs">
      <div className="toolbar">
        <select aria-label="Task" value={task ?? ''} onChange={(e) => onTask(e.target.value || null)}>
          <option value="">all tasks</option>
          {tasks.filter((t) => !t.includes('[')).map((t) => <option key={t}>{t}</option>)}
        </select>
        <label><input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> follow</label>
        <label><input type="checkbox" checked={requests} onChange={(e) => setRequests(e.target.checked)} /> API requests</label>
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      <pre className="loglines" data-testid="logs">{(requests ? lines : lines.filter((l) => l.split(' ', 3)[1] !== 'api')).join('\n')}<div ref={bottom} /></pre>
    </div>
  )
}
