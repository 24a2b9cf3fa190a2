"""Reads deploy/compose.yaml as `podman-compose config` resolved it and prints, for each service
that runs the relay's image, one tab-separated line: the service name, the podman run arguments
compose would give it (environment, secrets mounted read-only under /run/secrets, read-only root,
stop grace period), and its health check command; each shell-quoted. The container test runs
those services from the image it built, so the compose file is checked against the image's real
options, not only parsed.

    python compose_services.py RESOLVED.yaml DEPLOY_DIR

Exits non-zero, saying why, when a relay service lacks what the deployment relies on: a
health check on /readyz run by the binary, secrets as files, a stop grace period covering the
drain, a read-only root filesystem.
"""

import re
import shlex
import sys
from pathlib import Path

import yaml


def seconds(duration):
    """Compose durations: 90s, 1m30s, 2m (what stop_grace_period takes)."""
    total = 0
    for amount, unit in re.findall(r"(\d+)(h|ms|m|s|us|ns)", str(duration)):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1}.get(unit, 0)
    return total


def main():
    resolved, deploy = sys.argv[1], Path(sys.argv[2])
    spec = yaml.safe_load(Path(resolved).read_text())
    secrets = spec.get("secrets") or {}
    problems = []
    for name, service in (spec.get("services") or {}).items():
        if "referral-relay" not in str(service.get("image", "")):
            continue
        args = []
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            args += ["-e", f"{key}={value}"]
        for secret in service.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            target = source if isinstance(secret, str) else secret.get("target", source)
            if not target.startswith("/"):
                target = f"/run/secrets/{target}"
            file = Path(secrets[source]["file"])
            if not file.is_absolute():
                file = deploy / file
            args += ["-v", f"{file.resolve()}:{target}:ro"]
        if service.get("read_only"):
            args.append("--read-only")
        else:
            problems.append(f"{name}: read_only is not set")
        grace = seconds(service.get("stop_grace_period", "10s"))
        if grace < 45:
            problems.append(f"{name}: stop_grace_period {grace}s is shorter than the drain")
        args += ["--stop-timeout", str(grace)]
        test = (service.get("healthcheck") or {}).get("test") or []
        if isinstance(test, str):
            test = shlex.split(test)
        if test[:1] in (["CMD"], ["CMD-SHELL"]):
            kind, test = test[0], test[1:]
            if kind == "CMD-SHELL":
                problems.append(f"{name}: the health check needs a shell, the image has none to spare")
        if test[:3] != ["referral-relay", "healthcheck", "--ready"]:
            problems.append(f"{name}: the health check is not `referral-relay healthcheck --ready`")
        print(f"{name}\t{shlex.join(args)}\t{shlex.join(test)}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
