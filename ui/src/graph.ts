// A Workflow spec and a run's status as a graph: pure functions (tested in graph.test.ts); the
// layout is dagre's (a maintained layered layout), never computed by hand here.
import dagre from '@dagrejs/dagre'
import type { Json } from './api'

export type NodeKind = 'basic' | 'router' | 'parallel' | 'collection'
export type EdgeKind = 'success' | 'error' | 'route' | 'branch'

export interface GraphNode {
  id: string
  label: string
  kind: NodeKind
  detail: string
  phase: string
  counts?: Record<string, number> // collection: children per phase
  size?: number // collection: children known
  parent?: string // a parallel task's child
}

export interface GraphEdge { id: string; source: string; target: string; kind: EdgeKind; label?: string; taken: boolean }
export interface Graph { nodes: GraphNode[]; edges: GraphEdge[] }
export interface Placed { id: string; x: number; y: number }

export const NODE_WIDTH = 200
export const NODE_HEIGHT = 60
export const NOT_STARTED = 'NotStarted'
const CHILD = /^(.*)\[(\d+)\]$/

/** The children (`id[i]`) of each collection task in a status's task map, by parent id. */
export function collectionChildren(tasks: Record<string, Json>): Map<string, [string, Json][]> {
  const byParent = new Map<string, [string, Json][]>()
  for (const [key, value] of Object.entries(tasks)) {
    const m = CHILD.exec(key)
    if (!m) continue
    const list = byParent.get(m[1]) ?? []
    list.push([key, value])
    byParent.set(m[1], list)
  }
  for (const list of byParent.values()) list.sort((a, b) => childIndex(a[0]) - childIndex(b[0]))
  return byParent
}

const childIndex = (key: string): number => Number(CHILD.exec(key)?.[2] ?? 0)

function detailOf(task: Json): string {
  const type = task.type ?? 'basic'
  if (type === 'router') return `router: ${Object.keys(task.routes ?? {}).length} routes`
  if (type === 'parallel') return `parallel (${task.strategy ?? 'waitAll'})`
  if (type === 'collection') return `collection (${task.mode ?? 'parallel'})`
  if (task.agent) return `agent ${task.agent}${task.action ? `.${task.action}` : ''}`
  return task.tool ? `tool ${task.tool}` : type
}

/** Whether the run went from `source` to `target` along an edge of `kind`: a router's output names
 * the task it chose (`{"route", "next"}`); a transition is taken on its source's success or failure. */
function taken(tasks: Record<string, Json>, source: string, target: string, kind: EdgeKind): boolean {
  const from = tasks[source]
  if (!from || tasks[target] === undefined) return false
  if (kind === 'route') return typeof from.output?.next === 'string' ? from.output.next === target : true
  if (kind === 'success') return from.phase === 'Succeeded'
  if (kind === 'error') return from.phase === 'Failed'
  return true
}

/** Nodes and edges of `spec.tasks`, coloured by the phases in `tasks` (a run's `status.tasks`;
 * `{}` for a Workflow). An edge is `taken` when the run went along it. */
export function buildGraph(spec: Json, tasks: Record<string, Json> = {}): Graph {
  const nodes: GraphNode[] = []
  const edges: GraphEdge[] = []
  const children = collectionChildren(tasks)
  const edge = (source: string, target: string, kind: EdgeKind, label?: string) => {
    edges.push({ id: `${source}->${target}:${kind}:${label ?? ''}`, source, target, kind, label,
      taken: taken(tasks, source, target, kind) })
  }
  const add = (task: Json, parent?: string) => {
    if (!task || typeof task.id !== 'string') return
    const kind: NodeKind = task.type ?? 'basic'
    const node: GraphNode = { id: task.id, label: task.id, kind, detail: detailOf(task),
      phase: tasks[task.id]?.phase ?? NOT_STARTED, parent }
    if (kind === 'collection') {
      const counts: Record<string, number> = {}
      const list = children.get(task.id) ?? []
      for (const [, child] of list) counts[child.phase] = (counts[child.phase] ?? 0) + 1
      node.counts = counts
      node.size = list.length
    }
    nodes.push(node)
    if (kind === 'parallel') {
      for (const child of task.tasks ?? []) {
        add(child, task.id)
        if (child?.id) edge(task.id, child.id, 'branch')
      }
    }
    if (task.onSuccess?.next) edge(task.id, task.onSuccess.next, 'success')
    if (task.onError?.next) edge(task.id, task.onError.next, 'error', 'on error')
    if (kind === 'router') {
      for (const [value, target] of Object.entries(task.routes ?? {})) edge(task.id, target as string, 'route', value)
      if (task.default) edge(task.id, task.default, 'route', 'default')
    }
  }
  for (const task of spec?.tasks ?? []) add(task)
  const known = new Set(nodes.map((n) => n.id))
  return { nodes, edges: edges.filter((e) => known.has(e.source) && known.has(e.target)) }
}

/** Top-left positions of the nodes, left to right in the order tasks run. */
export function layout(graph: Graph): Map<string, Placed> {
  const g = new dagre.graphlib.Graph({ multigraph: true })
  g.setGraph({ rankdir: 'LR', nodesep: 24, ranksep: 70, marginx: 10, marginy: 10 })
  g.setDefaultEdgeLabel(() => ({}))
  for (const n of graph.nodes) g.setNode(n.id, { width: NODE_WIDTH, height: NODE_HEIGHT })
  for (const e of graph.edges) g.setEdge(e.source, e.target, {}, e.id)
  dagre.layout(g)
  const placed = new Map<string, Placed>()
  for (const n of graph.nodes) {
    const p = g.node(n.id)
    placed.set(n.id, { id: n.id, x: p.x - NODE_WIDTH / 2, y: p.y - NODE_HEIGHT / 2 })
  }
  return placed
}

// The task phase a state event moves its task to (the reducer's table, reducer.py _TASK_TARGET):
// the node changes colour at once; the status, fetched after, has the rest.
const EVENT_PHASE: Record<string, string> = {
  TaskRetryScheduled: 'Waiting', TaskDispatched: 'Pending', TaskExecutionStarted: 'Running',
  TaskExecutionSuccess: 'Succeeded', TaskExecutionFailed: 'Failed',
}
const RANK: Record<string, number> = { NotStarted: -2, Waiting: -1, Pending: 0, Running: 1 }
/** How far a phase is: not started, waiting, pending, running, then any end. */
export const rank = (phase: string) => RANK[phase] ?? 2

/** The phase of `task` after `event` (type and data), or null when the event does not change it. */
export function phaseAfter(current: { phase: string; attempt?: number } | undefined, type: string, data: Json): string | null {
  let target = EVENT_PHASE[type]
  if (!target) return null
  if (type === 'TaskExecutionFailed' && data?.error?.reason === 'Cancelled') target = 'Cancelled'
  const attempt = Number(data?.attempt ?? 1)
  if (!current || attempt > (current.attempt ?? 1)) return target
  if (attempt < (current.attempt ?? 1)) return null // a replaced attempt's late news
  return rank(target) > rank(current.phase) || (rank(target) === 2 && rank(current.phase) < 2) ? target : null
}

export const TERMINAL = new Set(['Succeeded', 'Failed', 'TimedOut', 'Cancelled'])
