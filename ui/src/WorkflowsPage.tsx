import { useEffect, useMemo, useState } from 'react'
import { stringify } from 'yaml'
import { ApiError, call, can, get, query, type Access, type Json } from './api'
import { age } from './format'
import { GraphView } from './GraphView'
import { href, navigate } from './route'
import { PhaseBadge, Progress } from './RunsPage'
import { fieldsOf, fieldValue, schemaProblems, type Field } from './schemaForm'

function Ready({ wf }: { wf: Json }) {
  const cond = (wf.status?.conditions ?? []).find((c: Json) => c.type === 'Ready')
  if (!cond) return <span className="badge phase-Pending">Unchecked</span>
  return <span className={`badge ${cond.status === 'True' ? 'phase-Succeeded' : 'phase-Failed'}`} title={cond.message}>
    {cond.status === 'True' ? 'Valid' : 'Invalid'}</span>
}

export function WorkflowsPage({ namespace }: { namespace: string }) {
  const [items, setItems] = useState<Json[]>([])
  const [error, setError] = useState<string | null>(null)
  const [pages, setPages] = useState<string[]>([''])
  const [next, setNext] = useState<string | null>(null)
  useEffect(() => setPages(['']), [namespace])
  useEffect(() => {
    if (!namespace) return
    get(`/namespaces/${namespace}/workflows${query({ limit: 100, continue: pages[pages.length - 1] || undefined })}`)
      .then((page) => { setItems(page.items); setNext(page.continue ?? null); setError(null) },
        (e) => setError((e as Error).message))
  }, [namespace, pages])
  return (
    <section>
      <div className="toolbar"><h1>Workflows</h1><span className="muted">in {namespace}</span></div>
      {error && <p className="error" role="alert">{error}</p>}
      <table>
        <thead><tr><th>Name</th><th>Status</th><th>Tasks</th><th>Description</th><th>Created</th></tr></thead>
        <tbody>
          {items.map((wf) => (
            <tr key={wf.metadata.uid} data-workflow={wf.metadata.name}>
              <td><a href={href(['workflows', namespace, wf.metadata.name])}>{wf.metadata.name}</a></td>
              <td><Ready wf={wf} /></td>
              <td>{wf.status?.taskCount ?? wf.spec?.tasks?.length ?? '-'}</td>
              <td>{wf.spec?.description ?? ''}</td>
              <td>{age(wf.metadata.creationTimestamp)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <div className="pager">
        <button disabled={pages.length < 2} onClick={() => setPages(pages.slice(0, -1))}>Previous</button>
        <button disabled={!next} onClick={() => next && setPages([...pages, next])}>Next</button>
      </div>
    </section>
  )
}

export function WorkflowPage({ namespace, name }: { namespace: string; name: string }) {
  const [wf, setWf] = useState<Json | null>(null)
  const [runs, setRuns] = useState<Json[]>([])
  const [access, setAccess] = useState<Access | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [tab, setTab] = useState<'graph' | 'yaml'>('graph')
  useEffect(() => {
    get(`/namespaces/${namespace}/workflows/${name}`).then(setWf, (e) => setError((e as Error).message))
    get(`/namespaces/${namespace}/access`).then((a) => setAccess(a.resources), () => setAccess(null))
    get(`/namespaces/${namespace}/executions${query({ workflow: name, limit: 20 })}`)
      .then((page) => setRuns(page.items), () => setRuns([]))
  }, [namespace, name])
  const noTasks = useMemo(() => ({}), [])
  if (error) return <p className="error" role="alert">{error}</p>
  if (!wf) return <p className="muted">Loading…</p>
  const cond = (wf.status?.conditions ?? []).find((c: Json) => c.type === 'Ready')
  return (
    <section className="run">
      <div className="run-head">
        <div>
          <h1>{name} <Ready wf={wf} /></h1>
          <div className="muted">{namespace} · {wf.spec?.description ?? ''}</div>
          {cond && cond.status !== 'True' && <pre className="error">{cond.message}</pre>}
        </div>
      </div>
      <div className="run-body" data-access={access ? 'known' : 'unknown'}>
        <div className="run-main">
          <div className="tabs" role="tablist">
            <button role="tab" aria-selected={tab === 'graph'} className={tab === 'graph' ? 'active' : ''} onClick={() => setTab('graph')}>Graph</button>
            <button role="tab" aria-selected={tab === 'yaml'} className={tab === 'yaml' ? 'active' : ''} onClick={() => setTab('yaml')}>YAML</button>
          </div>
          {tab === 'graph' ? <GraphView spec={wf.spec} tasks={noTasks} /> : <pre className="yaml">{stringify(wf)}</pre>}
          <h2>Recent runs</h2>
          <table>
            <tbody>
              {runs.map((r) => (
                <tr key={r.metadata.uid}>
                  <td><a href={href(['runs', namespace, r.metadata.name])}>{r.metadata.name}</a></td>
                  <td><PhaseBadge phase={r.status?.phase} /></td><td><Progress progress={r.status?.progress} /></td>
                  <td>{age(r.metadata.creationTimestamp)}</td>
                </tr>
              ))}
              {!runs.length && <tr><td className="muted">No runs.</td></tr>}
            </tbody>
          </table>
        </div>
        {can(access, 'workflowexecutions', 'create') && <SubmitForm namespace={namespace} workflow={name} schema={wf.spec?.input} />}
      </div>
    </section>
  )
}

/** A new run: one field per property of the input schema (or the input as JSON), checked against
 * the schema before it is sent; the API's refusal, naming its field, is shown as it comes. */
function SubmitForm({ namespace, workflow, schema }: { namespace: string; workflow: string; schema: Json }) {
  const fields = useMemo(() => fieldsOf(schema), [schema])
  const [values, setValues] = useState<Record<string, string | boolean>>({})
  const [raw, setRaw] = useState(fields ? false : true)
  const [json, setJson] = useState('{}')
  const [runName, setRunName] = useState('')
  const [problems, setProblems] = useState<string[]>([])
  const [busy, setBusy] = useState(false)

  const input = (): { value?: Json; problems: string[] } => {
    if (raw || !fields) {
      try {
        return { value: json.trim() ? JSON.parse(json) : null, problems: [] }
      } catch (e) {
        return { problems: [`input: not valid JSON (${(e as Error).message})`] }
      }
    }
    const value: Record<string, Json> = {}
    const found: string[] = []
    for (const f of fields) {
      const v = fieldValue(f, values[f.name] ?? (f.kind === 'boolean' ? false : ''))
      if (v.problem) found.push(v.problem)
      else if (v.value !== undefined) value[f.name] = v.value
    }
    return { value, problems: found }
  }

  const submit = async () => {
    const { value, problems: found } = input()
    const all = found.length ? found : schemaProblems(schema, value)
    setProblems(all)
    if (all.length) return
    setBusy(true)
    try {
      const created = await call('POST', `/namespaces/${namespace}/workflows/${workflow}/executions`,
        { input: value, ...(runName.trim() ? { name: runName.trim() } : {}) })
      navigate(['runs', namespace, created.name])
    } catch (e) {
      setProblems([e instanceof ApiError && e.field ? `${e.field}: ${e.message}` : (e as Error).message])
    } finally {
      setBusy(false)
    }
  }

  const toRaw = () => { const v = input(); if (v.value !== undefined) setJson(JSON.stringify(v.value, null, 2)); setRaw(true) }
  return (
    <form className="panel submit" aria-label="Submit a run" onSubmit={(e) => { e.preventDefault(); void submit() }} noValidate>
      <h2>Submit a run</h2>
      <label>Name (optional)<input value={runName} onChange={(e) => setRunName(e.target.value)} placeholder={`${workflow}-xxxxx`} /></label>
      {fields && !raw ? fields.map((f) => <FieldInput key={f.name} field={f} value={values[f.name]}
        onChange={(v) => setValues({ ...values, [f.name]: v })} />)
        : <label>Input (JSON)<textarea rows={8} value={json} onChange={(e) => setJson(e.target.value)} spellCheck={false} aria-label="Input JSON" /></label>}
      {fields && <button type="button" className="link" onClick={() => (raw ? setRaw(false) : toRaw())}>{raw ? 'Edit as form' : 'Edit as JSON'}</button>}
      {problems.length > 0 && (
        <ul className="error" role="alert" data-testid="submit-problems">{problems.map((p) => <li key={p}>{p}</li>)}</ul>
      )}
      <button type="submit" className="primary" disabled={busy}>Submit</button>
    </form>
  )
}

function FieldInput({ field, value, onChange }: { field: Field; value: string | boolean | undefined; onChange: (v: string | boolean) => void }) {
  const id = `field-${field.name}`
  const label = <span>{field.label}{field.required && <span className="required" title="required"> *</span>}</span>
  if (field.kind === 'boolean') {
    return <label className="check"><input id={id} name={field.name} type="checkbox" checked={!!value} onChange={(e) => onChange(e.target.checked)} /> {label}</label>
  }
  return (
    <label htmlFor={id}>
      {label}
      {field.kind === 'enum' ? (
        <select id={id} name={field.name} value={String(value ?? '')} onChange={(e) => onChange(e.target.value)}>
          <option value="">-</option>
          {field.options!.map((o) => <option key={JSON.stringify(o)} value={typeof o === 'string' ? o : JSON.stringify(o)}>{String(o)}</option>)}
        </select>
      ) : field.kind === 'json' ? (
        <textarea id={id} name={field.name} rows={3} value={String(value ?? '')} onChange={(e) => onChange(e.target.value)} spellCheck={false} />
      ) : (
        <input id={id} name={field.name} inputMode={field.kind === 'number' ? 'decimal' : undefined} value={String(value ?? '')} onChange={(e) => onChange(e.target.value)} />
      )}
      {field.description && <small className="muted">{field.description}</small>}
    </label>
  )
}
