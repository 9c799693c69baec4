import { memo, useCallback, useEffect, useMemo } from 'react'
import { Background, Controls, Handle, MarkerType, MiniMap, Position, ReactFlow, ReactFlowProvider, useNodesInitialized, useNodesState,
  type Edge, type Node, type NodeChange, type NodeProps } from '@xyflow/react'
import { markOnce } from './RunsPage'
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
type GraphProps = { spec: Json; tasks: Record<string, Json>; selected?: string | null; onSelect?: (id: string) => void }

export function GraphView(props: GraphProps) {
  return <ReactFlowProvider><Flow {...props} /></ReactFlowProvider>
}

function Flow({ spec, tasks, selected, onSelect }: GraphProps) {
  const shape = useMemo(() => buildGraph(spec), [spec])
  const positions = useMemo(() => layout(shape), [shape])
  const graph = useMemo(() => buildGraph(spec, tasks), [spec, tasks])
  // React Flow measures each node once (its handles' places, which edges start from); a node
  // object replaced by one without that measure is hidden until measured again, which a node of
  // unchanged size never is. So nodes are updated in place, keeping what React Flow added.
  const [nodes, setNodes, onNodesChange] = useNodesState<Node<TaskNodeData>>([])
  useEffect(() => {
    setNodes((previous) => {
      const byId = new Map(previous.map((n) => [n.id, n]))
      return graph.nodes.map((n) => ({
        ...(byId.get(n.id) ?? { id: n.id, type: 'task', draggable: false, connectable: false }),
        position: positions.get(n.id) ?? { x: 0, y: 0 }, data: { node: n, selected: n.id === selected },
      }))
    })
  }, [graph, positions, selected, setNodes])
  const edges: Edge[] = useMemo(() => graph.edges.map((e) => ({
    id: e.id, source: e.source, target: e.target, label: e.label,
    className: `edge-${e.kind}${e.taken ? ' taken' : ''}`,
    markerEnd: { type: MarkerType.ArrowClosed },
  })), [graph])
  // a node selected by keyboard (Tab to it, Enter) opens its panel as a click does
  const onChange = useCallback((changes: NodeChange<Node<TaskNodeData>>[]) => {
    onNodesChange(changes)
    const picked = changes.find((c) => c.type === 'select' && c.selected)
    if (picked && picked.type === 'select') onSelect?.(picked.id)
  }, [onNodesChange, onSelect])
  const initialized = useNodesInitialized()
  useEffect(() => { if (initialized && nodes.length) markOnce('compozy:graph-rendered') }, [initialized, nodes.length])
  const large = nodes.length > 200
  return (
    <div className="graph" data-testid="graph">
      <ReactFlow nodes={nodes} edges={edges} nodeTypes={nodeTypes} onNodesChange={onChange} fitView fitViewOptions={{ maxZoom: 1 }} minZoom={0.05}
        onlyRenderVisibleElements={large} nodesDraggable={false} nodesConnectable={false}
        onNodeClick={(_, node) => onSelect?.(node.id)}>
        <Background />
        <Controls showInteractive={false} />
        {!large && <MiniMap pannable zoomable bgColor="var(--panel)" maskColor="var(--minimap-mask)"
          nodeColor={(n) => `var(--${(n.data as TaskNodeData).node.phase})`} />}
      </ReactFlow>
    </div>
  )
}
