"""The process node: a kubelet stand-in that runs pods of the project's own image as local
processes and reports real Node, Lease and Pod status to the apiserver.

Threads: a watch thread feeds pod events, one waiter thread per process reports its exit, a
heartbeat thread renews the Lease; all of them only put events on one queue. The main thread
alone starts processes and writes pod status, so there are no races on pod state, and the
kernel's parent-death signal (tied to the starting thread) kills pod processes if the node dies.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...kube import ApiException, Kube, write_kubeconfig
from ..process import _die_with_parent, log_tail
from . import podspec
from .podspec import ConfigError, condition
from .probes import run_probe
from .volumes import SA_MOUNT, decode_secret, materialize, mounts

JSON = dict[str, Any]
log = logging.getLogger("process-node")

DEFAULT_IMAGES = ("compozy/compozy-operator", "ghcr.io/compozy/compozy-operator")
DEFAULT_ENTRYPOINT = ("compozy",)
LEASE_SECONDS = 20
HEARTBEAT_SECONDS = 5
CONFIG_RETRY_SECONDS = 2.0


@dataclass
class NodeConfig:
    name: str
    workdir: Path
    images: tuple[str, ...] = DEFAULT_IMAGES
    entrypoint: tuple[str, ...] = DEFAULT_ENTRYPOINT
    capacity: dict[str, str] = field(default_factory=lambda: {"cpu": "16", "memory": "32Gi", "pods": "250"})


@dataclass
class Container:
    spec: JSON
    log_path: Path
    term_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    next_start: float | None = 0.0  # monotonic time to (re)start at; None: never again
    probe_due: dict[str, float] = field(default_factory=dict)
    probe_runs: dict[str, int] = field(default_factory=dict)  # consecutive results, sign = pass/fail
    probing: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Pod:
    obj: JSON
    root: Path
    containers: dict[str, Container]
    kill_deadline: float | None = None
    volume_dirs: dict[str, Path] | None = None
    start_time: str = field(default_factory=podspec.now)
    terminal_reason: tuple[str, str] | None = None  # pod-level (reason, message)
    last_status: JSON | None = None

    @property
    def uid(self) -> str:
        return self.obj["metadata"]["uid"]

    @property
    def ref(self) -> str:
        return f"{self.obj['metadata']['namespace']}/{self.obj['metadata']['name']}"

    @property
    def policy(self) -> str:
        return self.obj["spec"].get("restartPolicy", "Always")

    def any_running(self) -> bool:
        return any(c.running for c in self.containers.values())


def _micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ProcessNode:
    def __init__(self, kube: Kube, config: NodeConfig) -> None:
        self.kube = kube
        self.cfg = config
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.pods: dict[str, Pod] = {}
        self.stopping = threading.Event()
        self.probe_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")
        self.apiserver = kube.api_client.configuration.host
        self.ca_file = kube.api_client.configuration.ssl_ca_cert

    # ---- node registration and heartbeat -------------------------------------------------

    def node_status(self, ready: bool, reason: str, message: str) -> JSON:
        hb = podspec.now()
        conds = [
            {"type": t, "status": "False", "reason": f"KubeletHasSufficient{r}", "message": f"no {r.lower()} pressure",
             "lastHeartbeatTime": hb, "lastTransitionTime": hb}
            for t, r in (("MemoryPressure", "Memory"), ("DiskPressure", "Disk"), ("PIDPressure", "PID"))
        ]
        conds.append({"type": "Ready", "status": "True" if ready else "Unknown", "reason": reason,
                      "message": message, "lastHeartbeatTime": hb, "lastTransitionTime": hb})
        return {
            "capacity": self.cfg.capacity,
            "allocatable": self.cfg.capacity,
            "conditions": conds,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.cfg.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "process node",
                "kernelVersion": os.uname().release, "kubeletVersion": "v1.34.4-process-node",
                "kubeProxyVersion": "", "containerRuntimeVersion": "process://1",
                "machineID": self.cfg.name, "systemUUID": self.cfg.name, "bootID": str(os.getpid()),
            },
        }

    def register(self) -> None:
        name = self.cfg.name
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "compozy.dev/process-node": "true"}
        try:
            self.kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                               "metadata": {"name": name, "labels": labels}})
        except ApiException as e:
            if e.status != 409:
                raise
        self.kube.merge_patch(f"/api/v1/nodes/{name}/status",
                              {"status": self.node_status(True, "KubeletReady", "process node is posting ready status")})
        self.renew_lease()

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.cfg.name}"
        spec = {"holderIdentity": self.cfg.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            self.kube.merge_patch(path, {"spec": spec})
        except ApiException as e:
            if e.status != 404:
                raise
            node = self.kube.get(f"/api/v1/nodes/{self.cfg.name}")
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.cfg.name, "uid": node["metadata"]["uid"]}
            self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.cfg.name, "ownerReferences": [owner]}, "spec": spec,
            })

    def _heartbeat(self) -> None:
        beats = 0
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.renew_lease()
                beats += 1
                if beats % 4 == 0:
                    self.kube.merge_patch(f"/api/v1/nodes/{self.cfg.name}/status", {
                        "status": {"conditions": self.node_status(True, "KubeletReady", "process node is posting ready status")["conditions"]}})
            except Exception as e:  # noqa: BLE001 - keep beating; the apiserver may be restarting
                log.warning("heartbeat failed: %s", e)

    # ---- pod watch -----------------------------------------------------------------------

    def _watch(self) -> None:
        selector = f"spec.nodeName={self.cfg.name}"
        while not self.stopping.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                self.events.put(("sync", listing["items"]))
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for ev in self.kube.watch("/api/v1/pods", rv, timeout_seconds=120, fieldSelector=selector):
                        if ev["type"] == "ERROR":
                            raise RuntimeError(ev["object"].get("message", "watch error"))
                        rv = ev["object"]["metadata"]["resourceVersion"]
                        if ev["type"] != "BOOKMARK":
                            self.events.put(("pod", ev["type"], ev["object"]))
            except Exception as e:  # noqa: BLE001 - relist and go on, as a kubelet does
                if not self.stopping.is_set():
                    log.info("pod watch restarts after: %s", e)
                    time.sleep(0.5)

    # ---- main loop -----------------------------------------------------------------------

    def run(self) -> None:
        self.cfg.workdir.mkdir(parents=True, exist_ok=True)
        self.register()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()
        log.info("process node %s ready (images: %s)", self.cfg.name, ", ".join(self.cfg.images))
        while not self.stopping.is_set():
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                event = None
            try:
                if event:
                    self.handle(event)
                self.tick()
            except Exception:  # noqa: BLE001 - one bad pod must not take the node down
                log.exception("error handling %s", event[:2] if event else "timers")
        self.shutdown()

    def stop(self) -> None:
        self.stopping.set()

    def handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "sync":
            seen = {p["metadata"]["uid"] for p in event[1]}
            for uid in [u for u in self.pods if u not in seen]:
                self.forget(self.pods[uid], kill=True)
            for obj in event[1]:
                self.on_pod("ADDED", obj)
        elif kind == "pod":
            self.on_pod(event[1], event[2])
        elif kind == "exit":
            self.on_exit(*event[1:])
        elif kind == "probe":
            self.on_probe(*event[1:])

    def on_pod(self, etype: str, obj: JSON) -> None:
        uid = obj["metadata"]["uid"]
        pod = self.pods.get(uid)
        if etype == "DELETED":
            if pod:
                self.forget(pod, kill=True)
            return
        if pod is None:
            pod = self.adopt(obj)
            if pod is None:
                return
        pod.obj = obj
        if obj["metadata"].get("deletionTimestamp"):
            self.begin_delete(pod)

    def adopt(self, obj: JSON) -> Pod | None:
        """A pod seen for the first time: start it, or settle what a previous node process left."""
        meta, status = obj["metadata"], obj.get("status") or {}
        if meta.get("deletionTimestamp") and not status.get("containerStatuses"):
            self.force_delete(obj)
            return None
        if status.get("phase") in ("Succeeded", "Failed"):
            if meta.get("deletionTimestamp"):
                self.force_delete(obj)
            return None
        root = self.cfg.workdir / "pods" / meta["uid"]
        pod = Pod(obj, root, {
            c["name"]: Container(c, root / "logs" / f"{c['name']}.log", root / "termination" / c["name"])
            for c in obj["spec"]["containers"]
        })
        self.pods[meta["uid"]] = pod
        previous = {s["name"]: s for s in status.get("containerStatuses") or []}
        if previous and any("running" in s.get("state", {}) for s in previous.values()):
            # Started by an earlier run of this node; its process died with that run.
            if pod.policy == "Never":
                pod.terminal_reason = ("ContainerLost",
                                       "the process node restarted; the container's process did not survive")
                for c in pod.containers.values():
                    c.state = {"terminated": podspec.terminated_state(137, status.get("startTime") or podspec.now(),
                                                                        reason="ContainerLost")}
                    c.next_start = None
                self.write_status(pod)
                return pod
            for c in pod.containers.values():
                c.restart_count = previous.get(c.name, {}).get("restartCount", 0) + 1
        if not all(podspec.is_own_image(c["image"], self.cfg.images) for c in obj["spec"]["containers"]):
            self.reject_image(pod)
        return pod

    def reject_image(self, pod: Pod) -> None:
        foreign = [c["image"] for c in pod.obj["spec"]["containers"] if not podspec.is_own_image(c["image"], self.cfg.images)]
        message = (f"image not runnable on the process node: {', '.join(foreign)} "
                   f"(it runs only {', '.join(self.cfg.images)})")
        pod.terminal_reason = (podspec.NOT_RUNNABLE_REASON, message)
        for c in pod.containers.values():
            c.next_start = None
            c.state = {"terminated": podspec.terminated_state(128, podspec.now(), message, podspec.NOT_RUNNABLE_REASON)}
        self.write_status(pod)

    # ---- containers ----------------------------------------------------------------------

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        path = "secrets" if kind == "secret" else "configmaps"
        try:
            obj = self.kube.get(f"/api/v1/namespaces/{namespace}/{path}/{name}")
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        if kind == "secret":
            return decode_secret(obj)
        return dict(obj.get("data") or {})

    def base_env(self, pod: Pod, c: Container, mount_map: dict[str, Path]) -> dict[str, str]:
        host, port = self.apiserver.rsplit("//", 1)[1].rsplit(":", 1)
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(pod.root / "home"),
            "HOSTNAME": pod.obj["metadata"]["name"],
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "COMPOZY_TERMINATION_LOG": str(c.term_path),
            "COMPOZY_PROCESS_NODE_MOUNTS": json.dumps({k: str(v) for k, v in mount_map.items()}),
        }
        if "/tmp" in mount_map:
            env["TMPDIR"] = str(mount_map["/tmp"])
        if SA_MOUNT in mount_map:
            sa = mount_map[SA_MOUNT]
            env["KUBECONFIG"] = str(write_kubeconfig(
                pod.root / f"kubeconfig-{c.name}", self.apiserver, sa / "ca.crt",
                user={"tokenFile": str(sa / "token")}, namespace=pod.obj["metadata"]["namespace"]))
        return env

    def start_container(self, pod: Pod, c: Container) -> None:
        obj = pod.obj
        try:
            if pod.volume_dirs is None:
                pod.volume_dirs = materialize(self.kube, obj, pod.root, self.lookup)
            mount_map = mounts(c.spec, pod.volume_dirs)
            env = podspec.container_env(obj, c.spec, self.base_env(pod, c, mount_map), self.lookup)
            argv = podspec.container_argv(c.spec, env, self.cfg.entrypoint)
        except (ConfigError, ApiException) as e:
            message = str(e) if isinstance(e, ConfigError) else f"API error {e.status}: {e.reason}"
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}
            c.next_start = time.monotonic() + CONFIG_RETRY_SECONDS
            pod.volume_dirs = None
            self.write_status(pod)
            return
        workdir = c.spec.get("workingDir")
        cwd = mount_map.get(workdir) if workdir else None
        if cwd is None and workdir and Path(workdir).is_dir():
            cwd = Path(workdir)
        cwd = cwd or pod.root
        for d in (pod.root / "home", c.log_path.parent, c.term_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        c.term_path.write_text("")
        started = podspec.now()
        exe = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
        try:
            with c.log_path.open("ab") as out:
                if exe is None:
                    raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
                c.proc = subprocess.Popen([exe, *argv[1:]], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as e:
            c.proc = None
            c.state = {"terminated": podspec.terminated_state(128, started, str(e), "StartError")}
            self.after_exit(pod, c, 128)
            return
        c.env, c.cwd = env, str(cwd)
        c.state = {"running": {"startedAt": started}}
        c.next_start = None
        c.ready = "readinessProbe" not in c.spec
        c.probe_runs.clear()
        for kind in ("readinessProbe", "livenessProbe"):
            if kind in c.spec:
                c.probe_due[kind] = time.monotonic() + float(c.spec[kind].get("initialDelaySeconds", 0))
        proc = c.proc
        threading.Thread(target=lambda: self.events.put(("exit", pod.uid, c.name, proc, proc.wait())),
                         name=f"wait-{proc.pid}", daemon=True).start()
        log.info("started %s/%s pid %d: %s", pod.ref, c.name, proc.pid, " ".join(argv))
        self.write_status(pod)

    def on_exit(self, uid: str, name: str, proc: subprocess.Popen[bytes], code: int) -> None:
        pod = self.pods.get(uid)
        if pod is None or pod.containers[name].proc is not proc:
            return
        c = pod.containers[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the container forked goes with it
        except ProcessLookupError:
            pass
        started = c.state.get("running", {}).get("startedAt", podspec.now())
        written = c.term_path.read_text(errors="replace") if c.term_path.exists() else ""
        message = podspec.termination_message(c.spec, written, log_tail(c.log_path, 80), code)
        c.state = {"terminated": podspec.terminated_state(code, started, message)}
        c.ready = False
        log.info("%s/%s exited with %d", pod.ref, name, code)
        self.after_exit(pod, c, code)

    def after_exit(self, pod: Pod, c: Container, code: int) -> None:
        if pod.obj["metadata"].get("deletionTimestamp"):
            c.next_start = None
            if not pod.any_running():
                self.force_delete(pod.obj)
                self.forget(pod, kill=False)
            return
        if podspec.restarts(pod.policy, code):
            c.last_state = c.state
            delay = podspec.backoff_seconds(c.restart_count)
            c.restart_count += 1
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {delay:.0f}s restarting failed container={c.name}"}}
            c.next_start = time.monotonic() + delay
        else:
            c.next_start = None
        self.write_status(pod)

    # ---- probes --------------------------------------------------------------------------

    def _launch_probe(self, pod: Pod, c: Container, kind: str) -> None:
        c.probing.add(kind)
        proc = c.proc
        spec = c.spec[kind]

        def work() -> None:
            ok = run_probe(spec, c.spec, c.env, c.cwd)
            self.events.put(("probe", pod.uid, c.name, proc, kind, ok))

        self.probe_pool.submit(work)

    def on_probe(self, uid: str, name: str, proc: Any, kind: str, ok: bool) -> None:
        pod = self.pods.get(uid)
        if pod is None or pod.containers[name].proc is not proc:
            return
        c = pod.containers[name]
        c.probing.discard(kind)
        spec = c.spec[kind]
        c.probe_due[kind] = time.monotonic() + float(spec.get("periodSeconds", 10))
        runs = c.probe_runs.get(kind, 0)
        runs = (max(runs, 0) + 1) if ok else (min(runs, 0) - 1)
        c.probe_runs[kind] = runs
        if kind == "readinessProbe":
            if ok and runs >= int(spec.get("successThreshold", 1)) and not c.ready:
                c.ready = True
                self.write_status(pod)
            elif not ok and -runs >= int(spec.get("failureThreshold", 3)) and c.ready:
                c.ready = False
                self.write_status(pod)
        elif not ok and -runs >= int(spec.get("failureThreshold", 3)) and c.running:
            log.info("%s/%s failed its liveness probe; killing it", pod.ref, name)
            c.proc.send_signal(signal.SIGKILL)

    # ---- timers --------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        for pod in list(self.pods.values()):
            if pod.kill_deadline is not None and now >= pod.kill_deadline:
                for c in pod.containers.values():
                    if c.running:
                        os.killpg(c.proc.pid, signal.SIGKILL)
                pod.kill_deadline = None
            if pod.obj["metadata"].get("deletionTimestamp") or pod.terminal_reason:
                continue
            for c in pod.containers.values():
                if c.next_start is not None and now >= c.next_start and not c.running:
                    self.start_container(pod, c)
                if c.running:
                    for kind, due in c.probe_due.items():
                        if now >= due and kind not in c.probing:
                            self._launch_probe(pod, c, kind)

    # ---- status --------------------------------------------------------------------------

    def status_of(self, pod: Pod) -> JSON:
        states = [c.state for c in pod.containers.values()]
        phase = "Failed" if pod.terminal_reason else podspec.pod_phase(pod.policy, states)
        all_ready = all(c.ready for c in pod.containers.values())
        started = any("running" in s or "terminated" in s for s in states) or pod.terminal_reason is not None
        statuses = []
        for c in pod.containers.values():
            s: JSON = {
                "name": c.name, "image": c.spec["image"], "imageID": f"process://{c.spec['image']}",
                "ready": c.ready, "restartCount": c.restart_count, "started": "running" in c.state,
                "state": c.state, "lastState": c.last_state,
            }
            if c.proc is not None:
                s["containerID"] = f"process://{self.cfg.name}/{c.proc.pid}"
            statuses.append(s)
        conds = [
            condition("PodReadyToStartContainers", True),
            condition("Initialized", True),
            condition("ContainersReady", all_ready and phase == "Running",
                      None if all_ready else "ContainersNotReady"),
            condition("Ready", all_ready and phase == "Running", None if all_ready else "ContainersNotReady"),
            condition("PodScheduled", True),
        ]
        status: JSON = {"phase": phase, "conditions": conds, "containerStatuses": statuses,
                        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                        "startTime": pod.start_time}
        if started:
            status["podIP"] = "127.0.0.1"
            status["podIPs"] = [{"ip": "127.0.0.1"}]
        if pod.terminal_reason:
            status["reason"], status["message"] = pod.terminal_reason
        return status

    def write_status(self, pod: Pod) -> None:
        status = self.status_of(pod)
        # Only report what changed; transition times would otherwise make every write differ.
        comparable = json.dumps(status, sort_keys=True, default=str)
        comparable = "".join(comparable.split('"lastTransitionTime"'))
        if comparable == pod.last_status:
            return
        meta = pod.obj["metadata"]
        try:
            self.kube.merge_patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                  {"status": status})
            pod.last_status = comparable
        except ApiException as e:
            if e.status != 404:
                raise

    # ---- deletion ------------------------------------------------------------------------

    def begin_delete(self, pod: Pod) -> None:
        if pod.kill_deadline is not None:
            return
        if not pod.any_running():
            self.force_delete(pod.obj)
            self.forget(pod, kill=False)
            return
        grace = pod.obj["metadata"].get("deletionGracePeriodSeconds")
        grace = 30 if grace is None else int(grace)
        for c in pod.containers.values():
            c.next_start = None
            if c.running:
                os.killpg(c.proc.pid, signal.SIGTERM)
        pod.kill_deadline = time.monotonic() + grace

    def force_delete(self, obj: JSON) -> None:
        meta = obj["metadata"]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        try:
            self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def forget(self, pod: Pod, kill: bool) -> None:
        if kill:
            for c in pod.containers.values():
                if c.running:
                    os.killpg(c.proc.pid, signal.SIGKILL)
        self.pods.pop(pod.uid, None)
        shutil.rmtree(pod.root, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop as a lost node would: every process dies at once (no SIGTERM, nothing reported for
        the pods), and the Node stops posting a ready status."""
        for c in [c for p in self.pods.values() for c in p.containers.values() if c.running]:
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
        try:
            self.kube.merge_patch(f"/api/v1/nodes/{self.cfg.name}/status", {"status": {
                "conditions": self.node_status(False, "NodeStatusUnknown", "process node stopped")["conditions"]}})
        except Exception as e:  # noqa: BLE001 - the apiserver may already be gone
            log.warning("could not mark node %s NotReady: %s", self.cfg.name, e)
        self.probe_pool.shutdown(wait=False, cancel_futures=True)
