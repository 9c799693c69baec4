import { useCallback, useEffect, useState } from 'react'
import { ApiError, get, signInOptions, signOut, token } from './api'
import { href, navigate, useRoute } from './route'
import { RunsPage } from './RunsPage'
import { RunPage } from './RunPage'
import { WorkflowPage, WorkflowsPage } from './WorkflowsPage'

// `via`: how the calls authenticate (a pasted token, an OIDC sign-in's cookie, a client
// certificate, the local cluster's user); only the first two can be signed out of here
export interface Session { user: string; namespaces: string[]; allNamespaces: boolean; via: string }
export const ALL = '*' // the namespace selector's "all namespaces"

type Theme = 'light' | 'dark'
const initialTheme = (): Theme =>
  (localStorage.getItem('compozy.theme') as Theme | null) ??
  (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light')

export function App() {
  const [session, setSession] = useState<Session | null>(null)
  const [problem, setProblem] = useState<string | null>(null)
  const [checking, setChecking] = useState(true)
  const [theme, setTheme] = useState<Theme>(initialTheme)
  const route = useRoute()

  useEffect(() => {
    document.documentElement.dataset.theme = theme
    localStorage.setItem('compozy.theme', theme)
  }, [theme])

  const signIn = useCallback(async () => {
    setChecking(true)
    const used = token.get()
    try {
      const me = await get('/whoami')
      // signed in even when the namespaces cannot be listed (an operator whose RBAC lacks `list
      // namespaces`): a namespace in the address still opens, and the header says why the menu is empty
      const ns = await get('/namespaces').catch((e: Error) => ({ items: [], allNamespaces: false, problem: e.message }))
      setSession({ user: me.user, namespaces: ns.items.map((n: { name: string }) => n.name),
        allNamespaces: ns.allNamespaces, via: me.via })
      setProblem(ns.problem ?? null)
    } catch (e) {
      setSession(null)
      const unauthorized = e instanceof ApiError && e.status === 401
      if (!unauthorized || used) setProblem((e as Error).message)
      // forget the token that was refused, never one stored since (another tab's sign-in)
      if (unauthorized && used && token.get() === used) token.clear()
    } finally {
      setChecking(false)
    }
  }, [])

  useEffect(() => { void signIn() }, [signIn])

  if (checking && !session) return <div className="center muted">Loading…</div>
  if (!session) return <SignIn problem={problem} onToken={(t) => { token.set(t); void signIn() }} />

  const [section, ns, name] = route.path
  const namespace = route.params.get('ns') ?? (session.allNamespaces ? ALL : session.namespaces[0] ?? '')
  const setNamespace = (n: string) => navigate([section ?? 'runs'], { ns: n }, true)

  return (
    <div className="app">
      <header className="top">
        <a className="brand" href={href(['runs'], { ns: namespace })}>Compozy</a>
        <nav>
          <a href={href(['runs'], { ns: namespace })} className={section !== 'workflows' ? 'active' : ''}>Runs</a>
          <a href={href(['workflows'], { ns: namespace })} className={section === 'workflows' ? 'active' : ''}>Workflows</a>
        </nav>
        {!name && (
          <label className="ns">
            Namespace{' '}
            <select aria-label="Namespace" value={namespace} onChange={(e) => setNamespace(e.target.value)}>
              {session.allNamespaces && <option value={ALL}>All namespaces</option>}
              {[...new Set([...session.namespaces, ...(namespace && namespace !== ALL ? [namespace] : [])])]
                .map((n) => <option key={n} value={n}>{n}</option>)}
            </select>
          </label>
        )}
        <span className="spacer" />
        <button className="ghost" onClick={() => setTheme(theme === 'dark' ? 'light' : 'dark')}
          aria-label="Toggle dark mode">{theme === 'dark' ? 'Light' : 'Dark'}</button>
        <span className="user" title="The identity every call acts as">{session.user}</span>
        {(session.via === 'token' || session.via === 'session') && (
          <button className="ghost" onClick={() => {
            token.clear()
            void signOut().finally(() => setSession(null))
          }}>Sign out</button>
        )}
      </header>
      {problem && <p className="error" role="alert">{problem}</p>}
      <main>
        {section === 'runs' && ns && name ? <RunPage key={`${ns}/${name}`} namespace={ns} name={name} route={route} />
          : section === 'workflows' && ns && name ? <WorkflowPage key={`${ns}/${name}`} namespace={ns} name={name} />
            : section === 'workflows' ? <WorkflowsPage namespace={namespace === ALL ? session.namespaces[0] ?? '' : namespace} />
              : <RunsPage namespace={namespace} route={route} />}
      </main>
    </div>
  )
}

/** A failed OIDC sign-in comes back to `/ui/?signinError=...`: said once, then gone from the address. */
function takeSignInError(): string | null {
  const q = new URLSearchParams(location.search)
  const error = q.get('signinError')
  if (error !== null) history.replaceState(null, '', location.pathname + location.hash)
  return error
}

function SignIn({ problem, onToken }: { problem: string | null; onToken: (t: string) => void }) {
  const [value, setValue] = useState('')
  const [oidc, setOidc] = useState(false)
  const [failed] = useState(takeSignInError)
  useEffect(() => { signInOptions().then((o) => setOidc(o.oidc), () => setOidc(false)) }, [])
  const login = `/oauth2/login?return=${encodeURIComponent('/ui/' + location.hash)}`
  return (
    <div className="center">
      <form className="card signin" onSubmit={(e) => { e.preventDefault(); if (value.trim()) onToken(value) }}>
        <h1>Compozy</h1>
        {failed && <p className="error" role="alert" data-testid="signin-error">Sign-in failed: {failed}</p>}
        {oidc && (
          <>
            <a className="button primary" href={login} data-testid="oidc-login">Sign in with your identity provider</a>
            <p className="muted">or</p>
          </>
        )}
        <p>Sign in with a Kubernetes bearer token: the UI acts as that identity, with its RBAC.</p>
        <p className="muted">For a ServiceAccount: <code>kubectl create token NAME -n NAMESPACE</code>; an OIDC
          ID token works where the cluster accepts OIDC.</p>
        <label htmlFor="token">Token</label>
        <textarea id="token" name="token" rows={4} value={value} autoFocus
          onChange={(e) => setValue(e.target.value)} spellCheck={false} />
        {problem && <p className="error" role="alert">{problem}</p>}
        <button type="submit" className="primary">Sign in</button>
      </form>
    </div>
  )
}
