import { memo, useMemo } from 'react'
import { Background, Controls, Handle, MarkerType, MiniMap, Position, ReactFlow, type Edge, type Node, type NodeProps } from '@xyflow/react'
import { buildGraph, layout, type GraphNode } from './graph'
import type { Json } from './api'

type TaskNodeData = { node: GraphNode; selected: boolean }

const TaskNode = memo(function TaskNode({ data }: NodeProps<Node<TaskNodeData>>) {
  const n = data.node
  return (
    <div className={`task kind-${n.kind} phase-${n.phase}${data.selected ? ' selected' : ''}`}
      data-task={n.id} data-phase={n.phase} title={`${n.id}: ${n.phase}`}>
      <Handle type="target" position={Position.Left} />
      <div className="task-id">{n.label}</div>
      <div className="task-detail">
        {n.counts ? <Counts counts={n.counts} size={n.size ?? 0} /> : `${n.detail} · ${n.phase === 'NotStarted' ? 'not started' : n.phase}`}
      </div>
      <Handle type="source" position={Position.Right} />
    </div>
  )
})

function Counts({ counts, size }: { counts: Record<string, number>; size: number }) {
  if (!size) return <>no items yet</>
  return (
    <span className="counts">
      {Object.entries(counts).map(([phase, n]) => <span key={phase} className={`count phase-${phase}`}>{n} {phase}</span>)}
    </span>
  )
}

const nodeTypes = { task: TaskNode }

/** The Workflow as a graph, nodes coloured by `tasks` (a run's status.tasks, live phases folded
 * in). Positions depend on the spec alone, so a phase change re-renders one node, never re-lays out. */
export function GraphView({ spec, tasks, selected, onSelect }: {
  spec: Json; tasks: Record<string, Json>; selected?: string | null; onSelect?: (id: string) => void
}) {
  const shape = useMemo(() => buildGraph(spec), [spec])
  const positions = useMemo(() => layout(shape), [shape])
  const graph = useMemo(() => buildGraph(spec, tasks), [spec, tasks])
  const nodes: Node<TaskNodeData>[] = useMemo(() => graph.nodes.map((n) => ({
    id: n.id, type: 'task', position: positions.get(n.id) ?? { x: 0, y: 0 },
    data: { node: n, selected: n.id === selected }, draggable: false, connectable: false,
  })), [graph, positions, selected])
  const edges: Edge[] = useMemo(() => graph.edges.map((e) => ({
    id: e.id, source: e.source, target: e.target, label: e.label,
    className: `edge-${e.kind}${e.taken ? ' taken' : ''}`,
    markerEnd: { type: MarkerType.ArrowClosed },
  })), [graph])
  const large = nodes.length > 200
  return (
    <div className="graph" data-testid="graph">
      <ReactFlow nodes={nodes} edges={edges} nodeTypes={nodeTypes} fitView minZoom={0.05}
        onlyRenderVisibleElements={large} nodesDraggable={false} nodesConnectable={false}
        onNodeClick={(_, node) => onSelect?.(node.id)}>
        <Background />
        <Controls showInteractive={false} />
        {!large && <MiniMap pannable zoomable />}
      </ReactFlow>
    </div>
  )
}
