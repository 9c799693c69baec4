"""Imported once by a pool runner's fork server (pool_runner.PRELOAD), for its side effect: what an
agent attempt would otherwise load on its first model call (both SDKs, the HTTP stack their clients
import lazily, their API resources) is loaded there, so an agent attempt's forked process imports
nothing. No request is made."""

from .providers import warm

warm()
