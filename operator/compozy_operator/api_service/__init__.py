"""api.Service (ARCHITECTURE.md §8): the HTTP API and the NATS trigger in front of WorkflowExecutions.

* :mod:`.models`: request and response bodies (the OpenAPI document is derived from them)
* :mod:`.auth`: TokenReview and SubjectAccessReview, cached briefly
* :mod:`.operations`: what each call does, whatever carries it
* :mod:`.streams`: a run's state events (SSE) and log lines, from JetStream
* :mod:`.http`: the FastAPI application; :mod:`.service`: uvicorn and the NATS trigger in the operator

docs/api.md is the user's description.
"""
