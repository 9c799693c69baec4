// A form's fields from a Workflow's input JSON Schema, and the input checked against the schema
// before it is sent (the API checks it again). @cfworker/json-schema interprets the schema: no
// code generation, so the UI's Content-Security-Policy needs no 'unsafe-eval' (Ajv would).
import { Validator, type OutputUnit } from '@cfworker/json-schema'
import type { Json } from './api'

export type FieldKind = 'text' | 'number' | 'boolean' | 'enum' | 'json'
export interface Field { name: string; label: string; kind: FieldKind; required: boolean; description?: string; options?: Json[] }

/** The fields of an object schema's properties; null when the schema is not one (a JSON editor then). */
export function fieldsOf(schema: Json): Field[] | null {
  if (!schema || typeof schema !== 'object' || !schema.properties || typeof schema.properties !== 'object') return null
  const required = new Set<string>(Array.isArray(schema.required) ? schema.required : [])
  // required fields first, each group in the schema's order (the API server may have sorted the keys)
  const entries = Object.entries(schema.properties as Record<string, Json>)
  const ordered = [...entries.filter(([n]) => required.has(n)), ...entries.filter(([n]) => !required.has(n))]
  return ordered.map(([name, p]) => {
    const type = Array.isArray(p?.type) ? p.type.find((t: string) => t !== 'null') : p?.type
    const kind: FieldKind = Array.isArray(p?.enum) ? 'enum' : type === 'string' ? 'text'
      : type === 'integer' || type === 'number' ? 'number' : type === 'boolean' ? 'boolean' : 'json'
    return { name, label: p?.title ?? name, kind, required: required.has(name), description: p?.description,
      options: Array.isArray(p?.enum) ? p.enum : undefined }
  })
}

/** The value a field's text stands for: numbers parsed where they parse (else left a string, for
 * the schema to refuse with its own message), JSON fields parsed, empty ones left out (undefined). */
export function fieldValue(field: Field, text: string | boolean): { value?: Json; problem?: string } {
  if (field.kind === 'boolean') return { value: !!text }
  const s = String(text)
  if (s.trim() === '') return {}
  if (field.kind === 'number') return { value: /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(s.trim()) ? Number(s) : s }
  if (field.kind === 'enum') {
    const match = field.options?.find((o) => JSON.stringify(o) === s || String(o) === s)
    return { value: match ?? s }
  }
  if (field.kind === 'json') {
    try {
      return { value: JSON.parse(s) }
    } catch (e) {
      return { problem: `input.${field.name}: not valid JSON (${(e as Error).message})` }
    }
  }
  return { value: s }
}

const WRAPPERS = new Set(['properties', 'items', 'prefixItems', 'allOf', '$ref', 'additionalProperties',
  'patternProperties', 'dependentSchemas', 'if', 'then', 'else', 'contains', 'unevaluatedProperties', 'unevaluatedItems'])

/** The schema's messages for `input`, each prefixed with where (`input.n: ...`); empty: valid. */
export function schemaProblems(schema: Json, input: Json): string[] {
  if (!schema || typeof schema !== 'object') return []
  let result
  try {
    result = new Validator(schema, '2020-12', false).validate(input)
  } catch (e) {
    return [`the Workflow's input schema cannot be used: ${(e as Error).message}`]
  }
  if (result.valid) return []
  const leaves = result.errors.filter((e: OutputUnit) => !WRAPPERS.has(e.keyword))
  return (leaves.length ? leaves : result.errors).map((e: OutputUnit) => `${where(e.instanceLocation)}: ${e.error}`)
}

function where(location: string): string {
  const parts = location.replace(/^#\/?/, '').split('/').filter(Boolean)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
  return ['input', ...parts].join('.')
}
