"""Tears down one test node (tests/support/node.rs) from its directory alone.

The same steps run when a test ends normally, from the reaper when the test process dies
(panic, kill -9), and at the next run for a node whose owner is gone. Everything to remove is
named in DIR/node.json, written before any of it was made, so a half-started node is cleaned too:

1. pods bound to the node are deleted through the API (if it still answers), and the kubelet
   gets a few seconds to stop their containers and remove their network namespaces and veths;
2. the node's processes (scheduler, controller-manager, kubelet), then the containerd shims
   started for its socket, then containerd, then every process left in its cgroup root;
3. its cgroup root in every hierarchy, every mount under DIR (the kubelet's volumes, the
   network namespaces, the container root filesystems), its bridge, its own entries in the few
   host paths that components write whatever their flags say;
4. its control plane's etcd and kube-apiserver if they still run (their reaper died too) and
   their directory, and DIR itself.

Only what this node made is touched. Each step tolerates what an earlier, interrupted cleanup
already removed.
"""

import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def api(node, method, path):
    ctx = ssl.create_default_context(cafile=node["ca"])
    ctx.load_cert_chain(node["admin_cert"], node["admin_key"])
    req = urllib.request.Request(node["api"] + path, method=method)
    with urllib.request.urlopen(req, context=ctx, timeout=5) as reply:
        return json.load(reply)


def delete_pods(node):
    if not node.get("api"):
        return
    selector = urllib.parse.quote("spec.nodeName=" + node["name"])
    try:
        pods = api(node, "GET", "/api/v1/pods?fieldSelector=" + selector)["items"]
    except Exception as error:  # the API server is gone: the later steps do it all
        print(f"pods not deleted through the API: {error}", file=sys.stderr)
        return
    for pod in pods:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=1"
        try:
            api(node, "DELETE", path)
        except Exception:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if not api(node, "GET", "/api/v1/pods?fieldSelector=" + selector)["items"]:
                return
        except Exception:
            return
        time.sleep(0.2)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return ") Z " not in f.read()
    except OSError:
        return False


def kill_and_wait(pids):
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def processes():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def kill_pid_files(node):
    pids = []
    for name in ("kube-scheduler", "kube-controller-manager", "kubelet"):
        try:
            with open(os.path.join(node["dir"], "pids", name)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        # Only if that pid still runs the node's program (pids are reused).
        if any(node["dir"].encode() in arg for arg in cmdline(pid)):
            pids.append(pid)
    kill_and_wait(pids)


def kill_containerd_and_shims(node):
    address = node["containerd_socket"].encode()
    config = node["containerd_config"].encode()
    shims, daemons = [], []
    for pid in processes():
        args = cmdline(pid)
        if not args:
            continue
        if args[0].endswith(b"containerd-shim-runc-v2") and address in args:
            shims.append(pid)
        elif args[0].endswith(b"containerd") and config in args:
            daemons.append(pid)
    kill_and_wait(shims)
    kill_and_wait(daemons)


def cgroup_dirs(node):
    """The node's cgroup root in every cgroup hierarchy mounted on this machine."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                path = os.path.join(fields[4], node["cgroup_root"].lstrip("/"))
                if os.path.isdir(path):
                    out.append(path)
    return out


def kill_cgroup_processes(node):
    for _ in range(50):
        pids = set()
        for root in cgroup_dirs(node):
            for dirpath, _, files in os.walk(root):
                if "cgroup.procs" in files:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(p) for p in f.read().split())
        if not pids:
            return
        kill_and_wait(sorted(pids))


def remove_cgroups(node):
    for root in cgroup_dirs(node):
        for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def unmount_all(node):
    prefix = node["dir"].rstrip("/")
    for _ in range(5):
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        # mountinfo escapes spaces as \040; the node's paths have none.
        ours = [p for p in points if p == prefix or p.startswith(prefix + "/")]
        if not ours:
            return
        for point in sorted(set(ours), key=lambda p: -p.count("/")):
            subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL, check=False)


def delete_bridge(node):
    subprocess.run(
        ["ip", "link", "delete", node["bridge"], "type", "bridge"],
        stderr=subprocess.DEVNULL,
        check=False,
    )


def sandbox_ids(node):
    """Ids of the pod sandboxes the node's containerd ran (each had a shim and a network)."""
    ids = set()
    tasks = os.path.join(node["dir"], "containerd/state/io.containerd.runtime.v2.task/k8s.io")
    if os.path.isdir(tasks):
        ids.update(os.listdir(tasks))
    results = "/var/lib/cni/results"
    prefix = node["network"] + "-"
    if os.path.isdir(results):
        for entry in os.listdir(results):
            if entry.startswith(prefix) and entry.endswith("-eth0"):
                ids.add(entry[len(prefix) : -len("-eth0")])
    return ids


def remove_host_entries(node, ids):
    """The node's own entries in host paths that components write whatever their flags say."""
    # libcni caches results here: "<network>-<sandbox>-eth0" and "cni-loopback-<sandbox>-lo".
    for sandbox in ids:
        for entry in (f"{node['network']}-{sandbox}-eth0", f"cni-loopback-{sandbox}-lo"):
            try:
                os.remove(os.path.join("/var/lib/cni/results", entry))
            except OSError:
                pass
        # A shim's socket, named by the hash of containerd's address, namespace and id; left
        # behind when the shim was killed.
        for suffix in ("", "/debug"):
            path = f"{node['containerd_socket']}/k8s.io/{sandbox}{suffix}"
            digest = hashlib.sha256(path.encode()).hexdigest()
            try:
                os.remove(os.path.join("/run/containerd/s", digest))
            except OSError:
                pass
    # The kubelet links container logs here; ours point into the node's log directory.
    links = "/var/log/containers"
    if os.path.isdir(links):
        for entry in os.listdir(links):
            path = os.path.join(links, entry)
            if os.path.islink(path) and os.readlink(path).startswith(node["dir"]):
                os.remove(path)


def ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def stop_control_plane(node):
    """etcd and kube-apiserver of the node's control plane, when their reaper died with the
    test, and their directory."""
    directory = node.get("control_plane_dir")
    if not directory:
        return
    # Not this script's own ancestors: the reaper that runs it names the directory too.
    ours = ancestors()
    kill_and_wait(
        [
            p
            for p in processes()
            if p not in ours and any(directory.encode() in a for a in cmdline(p))
        ]
    )
    shutil.rmtree(directory, ignore_errors=True)


def main():
    directory = sys.argv[1]
    # The test's own teardown stops its control plane itself, after this.
    keep_control_plane = "--keep-control-plane" in sys.argv[2:]
    try:
        with open(os.path.join(directory, "node.json")) as f:
            node = json.load(f)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        return
    delete_pods(node)
    ids = sandbox_ids(node)
    kill_pid_files(node)
    kill_containerd_and_shims(node)
    kill_cgroup_processes(node)
    remove_cgroups(node)
    unmount_all(node)
    delete_bridge(node)
    remove_host_entries(node, ids)
    if not keep_control_plane:
        stop_control_plane(node)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
