import { describe, expect, it } from 'vitest'
import { fieldsOf, fieldValue, schemaProblems } from './schemaForm'

const schema = {
  type: 'object', required: ['n', 'topic'],
  properties: {
    n: { type: 'integer', minimum: 1, title: 'How many' }, topic: { type: 'string', minLength: 3 },
    mode: { enum: ['fast', 'slow'] }, dry: { type: 'boolean' }, tags: { type: 'array', items: { type: 'string' } },
  },
}

describe('fieldsOf', () => {
  it('makes one field per property, of a kind that fits its type', () => {
    expect(fieldsOf(schema)!.map((f) => [f.name, f.kind, f.required])).toEqual([
      ['n', 'number', true], ['topic', 'text', true], ['mode', 'enum', false], ['dry', 'boolean', false], ['tags', 'json', false]])
    expect(fieldsOf({ required: ['b'], properties: { a: {}, b: {} } })!.map((f) => f.name)).toEqual(['b', 'a'])
    expect(fieldsOf({ type: 'string' })).toBeNull()
    expect(fieldsOf(null)).toBeNull()
  })
})

describe('fieldValue', () => {
  const [n, topic, , , tags] = fieldsOf(schema)!
  it('parses numbers where they parse and leaves the rest for the schema to refuse', () => {
    expect(fieldValue(n, '3')).toEqual({ value: 3 })
    expect(fieldValue(n, 'three')).toEqual({ value: 'three' })
    expect(fieldValue(topic, '')).toEqual({})
    expect(fieldValue(tags, '["a"]')).toEqual({ value: ['a'] })
    expect(fieldValue(tags, '[').problem).toMatch(/^input.tags: not valid JSON/)
  })
})

describe('schemaProblems', () => {
  it("names the field and gives the schema's own message", () => {
    expect(schemaProblems(schema, { n: 2, topic: 'cats' })).toEqual([])
    const problems = schemaProblems(schema, { n: 0, topic: 'cats' })
    expect(problems).toHaveLength(1)
    expect(problems[0]).toMatch(/^input\.n: .*1/)
    expect(schemaProblems(schema, { n: 1.5, topic: 'cats' })[0]).toMatch(/^input\.n: .*integer/)
    expect(schemaProblems(schema, { n: 1 }).join()).toMatch(/topic/)
  })
})
