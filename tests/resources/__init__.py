"""Tests of the compozy.dev/v1alpha1 API: the models and the CRDs generated from them."""

from __future__ import annotations

import copy
from typing import Any

import yaml

# The example of ARCHITECTURE.md section 4, made self-consistent: every tool, agent and task it
# refers to exists (the router's routes name real tasks, the collection's tool is defined, onError
# leads to a task that exists).
EXAMPLE_WORKFLOW: dict[str, Any] = yaml.safe_load(r"""
apiVersion: compozy.dev/v1alpha1
kind: Workflow
metadata: {name: review}
spec:
  description: Summarize a text and count its words
  input:
    type: object
    properties: {text: {type: string}, mode: {type: string}, urls: {type: array, items: {type: string}}}
    required: [text]
  env: {STYLE: terse}
  timeout: 30m
  tools:
    - id: word-count
      description: Count words
      inputSchema: {type: object, properties: {text: {type: string}}, required: [text]}
      python: |
        def run(input, ctx):
            return {"words": len(input["text"].split())}
    - id: shout
      command: ["sh", "-c", "tr a-z A-Z"]
    - id: fetch-url
      python: |
        def run(input, ctx):
            return {"url": input["url"]}
      env:
        - name: TOKEN
          valueFrom: {secretKeyRef: {name: fetch, key: token}}
      resources: {limits: {memory: 128Mi}}
  agents:
    - id: writer
      model:
        provider: openai
        name: gpt-4o-mini
        baseURL: http://llm.example:8000/v1
        apiKeySecretRef: {name: llm-credentials, key: api-key}
      instructions: You write short summaries.
      tools: [word-count]
      maxIterations: 5
      actions:
        - id: summarize
          prompt: "Summarize in {{ env.STYLE }} style: {{ input.text }}"
          outputSchema: {type: object, properties: {summary: {type: string}}, required: [summary]}
  tasks:
    - id: count
      tool: word-count
      with: {text: "{{ workflow.input.text }}"}
      retry: {limit: 3, backoff: {initial: 1s, factor: 2, max: 1m}}
      timeout: 2m
      onSuccess: {next: route}
      onError: {next: report-failure}
    - id: route
      type: router
      condition: "{{ workflow.input.mode }}"
      routes: {summary: summarize, fetch: fan-out}
      default: fan-out
    - id: summarize
      agent: writer
      action: summarize
      with: {text: "{{ workflow.input.text }}"}
      onSuccess: {next: fan-out}
    - id: fan-out
      type: parallel
      strategy: waitAll
      maxWorkers: 4
      tasks: [{id: a, tool: word-count, with: {text: x}}, {id: b, tool: shout, with: {}}]
      onSuccess: {next: each-url}
    - id: each-url
      type: collection
      items: "{{ workflow.input.urls }}"
      mode: parallel
      maxWorkers: 10
      task: {id: fetch, tool: fetch-url, with: {url: "{{ item }}"}}
      final: true
    - id: report-failure
      tool: shout
      with: {error: "{{ tasks.count.error }}"}
  output: {summary: "{{ tasks.summarize.output.summary }}"}
""")

EXAMPLE_EXECUTION: dict[str, Any] = yaml.safe_load(r"""
apiVersion: compozy.dev/v1alpha1
kind: WorkflowExecution
metadata: {name: review-1}
spec:
  workflowRef: {name: review}
  input: {text: "a short text", mode: summary, urls: ["http://example.com/"]}
  timeout: 10m
  cancel: false
""")


def example_workflow() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE_WORKFLOW)


def example_execution() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE_EXECUTION)
