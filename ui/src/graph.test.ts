import { describe, expect, it } from 'vitest'
import { buildGraph, collectionChildren, layout, NODE_WIDTH, phaseAfter } from './graph'

const spec = {
  tasks: [
    { id: 'pick', type: 'router', condition: '{{ workflow.input.kind }}', routes: { a: 'left', b: 'right' }, default: 'fan' },
    { id: 'left', tool: 't', onSuccess: { next: 'fan' }, onError: { next: 'report' } },
    { id: 'right', tool: 't' },
    { id: 'fan', type: 'parallel', tasks: [{ id: 'p1', tool: 't' }, { id: 'p2', agent: 'ag', action: 'say' }], onSuccess: { next: 'each' } },
    { id: 'each', type: 'collection', items: [1, 2, 3], task: { id: 'item', tool: 't' } },
    { id: 'report', tool: 't', onSuccess: { next: 'missing' } },
  ],
}

describe('buildGraph', () => {
  it('draws transitions, routes with the taken one marked, parallel branches and collection counts', () => {
    const g = buildGraph(spec, {
      pick: { phase: 'Succeeded', output: { route: 'a', next: 'left' } }, left: { phase: 'Succeeded' }, fan: { phase: 'Running' },
      'each[0]': { phase: 'Succeeded' }, 'each[1]': { phase: 'Failed' }, 'each[2]': { phase: 'Succeeded' },
    })
    expect(g.nodes.map((n) => n.id)).toEqual(['pick', 'left', 'right', 'fan', 'p1', 'p2', 'each', 'report'])
    const edge = (s: string, t: string) => g.edges.find((e) => e.source === s && e.target === t)!
    expect(edge('pick', 'left')).toMatchObject({ kind: 'route', label: 'a', taken: true })
    expect(edge('pick', 'right')).toMatchObject({ kind: 'route', label: 'b', taken: false })
    expect(edge('pick', 'fan')).toMatchObject({ kind: 'route', label: 'default', taken: false }) // fan ran, not from here
    expect(edge('left', 'fan')).toMatchObject({ kind: 'success', taken: true })
    expect(edge('left', 'report')).toMatchObject({ kind: 'error', taken: false })
    expect(edge('fan', 'p2')).toMatchObject({ kind: 'branch' })
    expect(g.edges.some((e) => e.target === 'missing')).toBe(false) // an unknown next is not drawn
    const each = g.nodes.find((n) => n.id === 'each')!
    expect(each.counts).toEqual({ Succeeded: 2, Failed: 1 })
    expect(each.size).toBe(3)
    expect(g.nodes.find((n) => n.id === 'right')!.phase).toBe('NotStarted')
    expect(g.nodes.find((n) => n.id === 'p2')!.detail).toBe('agent ag.say')
  })

  it('survives hostile specs (no tasks, tasks without ids)', () => {
    expect(buildGraph(null).nodes).toEqual([])
    expect(buildGraph({ tasks: [null, { tool: 'x' }, 7] }).nodes).toEqual([])
  })
})

describe('layout', () => {
  it('places every node, in run order from left to right', () => {
    const placed = layout(buildGraph(spec))
    expect(placed.size).toBe(8)
    expect(placed.get('left')!.x).toBeGreaterThanOrEqual(placed.get('pick')!.x + NODE_WIDTH)
    expect(placed.get('each')!.x).toBeGreaterThan(placed.get('fan')!.x)
  })
})

describe('collectionChildren', () => {
  it('groups children by parent in index order', () => {
    const c = collectionChildren({ 'a[10]': { phase: 'x' }, 'a[2]': { phase: 'y' }, b: { phase: 'z' } })
    expect(c.get('a')!.map(([k]) => k)).toEqual(['a[2]', 'a[10]'])
    expect(c.has('b')).toBe(false)
  })
})

describe('phaseAfter', () => {
  it('moves a task forward, never back within an attempt, and restarts it with a new attempt', () => {
    expect(phaseAfter(undefined, 'TaskDispatched', { attempt: 1 })).toBe('Pending')
    expect(phaseAfter({ phase: 'Running', attempt: 1 }, 'TaskDispatched', { attempt: 1 })).toBeNull()
    expect(phaseAfter({ phase: 'Running', attempt: 1 }, 'TaskExecutionSuccess', { attempt: 1 })).toBe('Succeeded')
    expect(phaseAfter({ phase: 'Failed', attempt: 1 }, 'TaskRetryScheduled', { attempt: 2 })).toBe('Waiting')
    expect(phaseAfter({ phase: 'Running', attempt: 2 }, 'TaskExecutionFailed', { attempt: 1 })).toBeNull()
    expect(phaseAfter({ phase: 'Running', attempt: 1 }, 'TaskExecutionFailed', { attempt: 1, error: { reason: 'Cancelled' } })).toBe('Cancelled')
    expect(phaseAfter({ phase: 'Succeeded', attempt: 1 }, 'TaskExecutionFailed', { attempt: 1 })).toBeNull()
    expect(phaseAfter(undefined, 'ToolExecutionStarted', {})).toBeNull()
  })
})
