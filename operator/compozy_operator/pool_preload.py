"""Imported once, for its side effects, by a pool runner's fork server (pool_runner.PRELOAD), so
that the process forked for each attempt imports nothing and copies little:

* the runner's code, the agent loop and both providers' SDKs, with what their clients load lazily on
  a first model call (providers.warm: no request is made), and the thread pool a tool runs in;
* then ``gc.freeze()``: every object made so far moves to the collector's permanent generation. A
  forked process's collections would otherwise walk (and so write to, and copy) the whole inherited
  heap: measured, a no-op attempt's process took 34-36 ms of CPU without it, 18-19 ms with it.
"""

import gc
import importlib

from .agents.providers import warm

for module in ("concurrent.futures.thread",  # a tool runs in asyncio's default executor
               "compozy_operator.pool_runner", "compozy_operator.task_executor", "compozy_operator.runtime",
               "compozy_operator.sandbox", "compozy_operator.agents.loop"):
    importlib.import_module(module)
warm()
gc.freeze()
