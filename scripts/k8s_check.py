"""Checks deploy/k8s/ against docker-compose.yml and config/*.toml.

Run by scripts/k8s-check.sh (after the schema validation) with the venv's
Python, which has PyYAML. Exits 1 listing every disagreement:
- the kustomization lists every manifest of the directory, and only those;
- every container runs the compose file's image (its default tag) and a
  role (first argument) that the compose file runs;
- each service's container port is the compose service's container port and
  the port of its listen_addr; probes: readiness /readyz and liveness /livez
  on that port, the compose healthcheck probes /readyz on the same port;
- every WALLET_* key in a ConfigMap or a container's env names a key of that
  service's config/<service>.toml (node_id: the participant's required key),
  and its value has the type of the default there;
- Services select pods of some workload and target a port they declare;
  envFrom names a ConfigMap of the base;
- the termination grace period outlasts shutdown_grace_ms;
- every container of a service or of the init job reads the cluster secret
  (WALLET_CLUSTER_SECRET_FILE) from a volume of the kustomization's
  generated Secret, as every compose service reads the compose secret.
"""

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SERVICES = ("coordinator", "participant", "projector")
# Config keys that have no default in config/<service>.toml (documented there).
REQUIRED_KEYS = {"participant": {"node_id"}}
# Environment variables of the image's entrypoint roles (docker/entrypoint.sh),
# not config keys.
# Config keys documented but commented out in config/<service>.toml (no
# default): the cluster secret's file, valid for every service and walletctl
# (the init job), and where traces go (every service).
OPTIONAL_KEYS = {"cluster_secret_file", "otlp_endpoint"}
# Roles that need the cluster secret, and where compose mounts it.
SECRET_ROLES = ("init", *SERVICES)
COMPOSE_SECRET = "cluster-secret"
COMPOSE_SECRET_PATH = "/run/secrets/cluster-secret"
ENTRYPOINT_ENV = {"WALLET_ETCD_NAME", "WALLET_PG_DATABASES", "WALLET_INIT_NODES", "WALLET_PARTITIONS"}

errors = []


def fail(msg):
    errors.append(msg)


def compose_default(value):
    """`${NAME:-default}` -> default (what the compose file uses unset)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def load_compose():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {name: svc for name, svc in compose["services"].items()}


def load_manifests():
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def check_secret(cname, container, pod_spec, settings, secret_files):
    """The container's WALLET_CLUSTER_SECRET_FILE is a key of a generated
    Secret, mounted from a volume of the pod."""
    path = settings.get("WALLET_CLUSTER_SECRET_FILE")
    if not path:
        fail(f"{cname}: no WALLET_CLUSTER_SECRET_FILE (the cluster secret)")
        return
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(mount):
            continue
        secret = volumes.get(m["name"], {}).get("secret", {}).get("secretName")
        if secret not in secret_files:
            fail(f"{cname}: {path} is not from a generated Secret ({sorted(secret_files)})")
        elif path[len(mount):] not in secret_files[secret]:
            fail(f"{cname}: {path}: no key {path[len(mount):]} in Secret {secret}")
        return
    fail(f"{cname}: WALLET_CLUSTER_SECRET_FILE {path} is on no mounted volume")


def main():
    compose = load_compose()
    configs = {s: tomllib.loads((ROOT / "config" / f"{s}.toml").read_text()) for s in SERVICES}
    manifests = load_manifests()
    objects = [o for docs in manifests.values() for o in docs]

    # The kustomization lists exactly the manifests.
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    if sorted(kust.get("resources", [])) != sorted(manifests):
        fail(f"kustomization.yaml resources {sorted(kust.get('resources', []))} != files {sorted(manifests)}")

    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]

    # The compose image, its roles and ports per role.
    compose_images = {compose_default(s["image"]) for s in compose.values() if "image" in s}
    if len(compose_images) != 1:
        fail(f"docker-compose.yml uses several images: {compose_images}")
    image = next(iter(compose_images))
    compose_by_role = {}
    for name, svc in compose.items():
        role = (svc.get("command") or ["coordinator"])[0]
        compose_by_role.setdefault(role, []).append((name, svc))

    def compose_ports(role):
        """Container ports a compose role listens on: its listen_addr and its
        published ports' container side."""
        ports = set()
        for _, svc in compose_by_role.get(role, []):
            env = svc.get("environment") or {}
            if "WALLET_LISTEN_ADDR" in env:
                ports.add(port_of(env["WALLET_LISTEN_ADDR"]))
            for p in svc.get("ports", []):
                ports.add(int(compose_default(p).rsplit(":", 1)[1]))
        return ports

    def compose_health(role):
        """(path, port) of the compose healthchecks' URLs for a role."""
        found = set()
        for _, svc in compose_by_role.get(role, []):
            for word in (svc.get("healthcheck") or {}).get("test", []):
                m = re.match(r"http://127\.0\.0\.1:(\d+)(/\S*)", str(word))
                if m:
                    found.add((m.group(2), int(m.group(1))))
        return found

    # The generated cluster secret: {Secret name: its keys}.
    secret_files = {}
    for g in kust.get("secretGenerator", []):
        keys = {f.split("=", 1)[0].rsplit("/", 1)[-1] for f in g.get("files", [])}
        secret_files[g["name"]] = keys
    if not secret_files:
        fail("kustomization.yaml generates no Secret for the cluster secret")
    for role in SECRET_ROLES:
        for name, svc in compose_by_role.get(role, []):
            env = svc.get("environment") or {}
            if COMPOSE_SECRET not in (svc.get("secrets") or []):
                fail(f"docker-compose.yml {name}: does not mount the secret {COMPOSE_SECRET}")
            if env.get("WALLET_CLUSTER_SECRET_FILE") != COMPOSE_SECRET_PATH:
                fail(f"docker-compose.yml {name}: WALLET_CLUSTER_SECRET_FILE is not {COMPOSE_SECRET_PATH}")

    shutdown_grace_s = {s: configs[s].get("shutdown_grace_ms", 0) / 1000 for s in SERVICES}
    checked_roles = set()

    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]
        spec = pod["spec"]
        labels = pod["metadata"].get("labels", {})
        if w["kind"] != "Job" and w["spec"]["selector"]["matchLabels"].items() - labels.items():
            fail(f"{wname}: selector does not match its pod labels")
        for c in spec["containers"]:
            cname = f"{wname} container {c['name']}"
            if c.get("image") != image:
                fail(f"{cname}: image {c.get('image')} is not the compose image {image}")
            role = (c.get("args") or c.get("command") or ["coordinator"])[0]
            if role not in compose_by_role:
                fail(f"{cname}: role {role} is not run by docker-compose.yml ({sorted(compose_by_role)})")
                continue
            checked_roles.add(role)
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            want = compose_ports(role)
            for pname, port in ports.items():
                # etcd's peer port is not published by compose.
                if port not in want and not (role == "etcd" and pname == "peer"):
                    fail(f"{cname}: port {pname}={port} is not a container port of compose's {role} ({sorted(want)})")

            # Settings: ConfigMaps and env.
            settings = {}
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef", {}).get("name")
                if cm not in config_maps:
                    fail(f"{cname}: envFrom names ConfigMap {cm}, which the base does not define")
                    continue
                if cm != f"wallet-{role}":
                    fail(f"{cname}: takes ConfigMap {cm}, expected wallet-{role}")
                settings.update(config_maps[cm])
            for e in c.get("env", []):
                settings[e["name"]] = e.get("value", "<from " + ",".join(e.get("valueFrom", {})) + ">")
            for key, value in settings.items():
                if not key.startswith("WALLET_") or key in ENTRYPOINT_ENV:
                    continue
                if key[len("WALLET_"):].lower() in OPTIONAL_KEYS:
                    continue
                if role not in configs:
                    if key != "WALLET_ETCD_ENDPOINTS":
                        fail(f"{cname}: {key} is not a setting of the {role} role")
                    continue
                ckey = key[len("WALLET_"):].lower()
                cfg = configs[role]
                if ckey in REQUIRED_KEYS.get(role, set()):
                    continue
                if ckey not in cfg:
                    fail(f"{cname}: {key} is no key of config/{role}.toml")
                    continue
                default = cfg[ckey]
                if isinstance(default, bool):
                    ok = value in ("true", "false")
                elif isinstance(default, int):
                    ok = re.fullmatch(r"\d+", str(value)) is not None
                else:
                    ok = isinstance(value, str)
                if not ok:
                    fail(f"{cname}: {key}={value!r} does not have the type of the default {default!r}")
            if role in configs:
                for required in REQUIRED_KEYS.get(role, set()):
                    if f"WALLET_{required.upper()}" not in settings:
                        fail(f"{cname}: the required key {required} is not set")
                listen = settings.get("WALLET_LISTEN_ADDR", configs[role]["listen_addr"])
                if port_of(listen) not in ports.values():
                    fail(f"{cname}: listen_addr {listen} is not a declared container port {ports}")

            # Probes: readiness /readyz, liveness /livez, on the port compose probes.
            health = compose_health(role)
            for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
                probe = c.get(kind)
                if role in configs and probe is None:
                    fail(f"{cname}: no {kind}")
                    continue
                if probe is None or "httpGet" not in probe:
                    continue
                port = probe["httpGet"]["port"]
                port = ports.get(port, port)
                if role in configs and probe["httpGet"]["path"] != path:
                    fail(f"{cname}: {kind} on {probe['httpGet']['path']}, expected {path}")
                if health and port not in {p for _, p in health}:
                    fail(f"{cname}: {kind} port {port} is not the port compose's healthcheck probes {health}")
                if kind == "readinessProbe" and health and probe["httpGet"]["path"] not in {p for p, _ in health}:
                    fail(f"{cname}: readiness path {probe['httpGet']['path']} is not compose's healthcheck {health}")
            if role in SECRET_ROLES:
                check_secret(cname, c, spec, settings, secret_files)
            if role in shutdown_grace_s:
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if grace <= shutdown_grace_s[role]:
                    fail(f"{wname}: terminationGracePeriodSeconds {grace} does not outlast shutdown_grace_ms")

    for role in ("etcd", "postgres", "init", *SERVICES):
        if role not in checked_roles:
            fail(f"no workload runs the {role} role of docker-compose.yml")

    # Services select a workload's pods and target a port it declares.
    for s in (o for o in objects if o["kind"] == "Service"):
        sel = s["spec"].get("selector", {})
        pods = [w for w in workloads if not sel.items() - w["spec"]["template"]["metadata"].get("labels", {}).items()]
        if not pods:
            fail(f"Service/{s['metadata']['name']} selects no workload's pods")
            continue
        declared = {}
        for w in pods:
            for c in w["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    declared[p["name"]] = p["containerPort"]
        for p in s["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            if t not in declared and t not in declared.values():
                fail(f"Service/{s['metadata']['name']}: targetPort {t} is no port of its pods {declared}")

    if errors:
        for e in errors:
            print(f"k8s-check: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"k8s-check: {len(workloads)} workloads agree with docker-compose.yml and config/*.toml")


if __name__ == "__main__":
    main()
