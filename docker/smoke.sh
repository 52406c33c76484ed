#!/usr/bin/env bash
# The Compose stack end to end, on the CPU profile: build the images, bring the
# stack up, run a study over HTTP, then a second one through an API restart and
# a killed Ray worker, and tear everything down. Prints each step and how long
# it took. Too slow for the test suite (a fresh image build is many minutes).
#
#   docker/smoke.sh                                  # docker compose, or podman-compose
#   KTG_SMOKE_POSTGRES=standin docker/smoke.sh       # no registry: PostgreSQL from Debian
#
# Settings (environment):
#   KTG_SMOKE_COMPOSE   the compose command, e.g. "podman compose" (default: `docker compose`
#                       when a Docker daemon answers, else podman-compose, else `podman compose`)
#   KTG_SMOKE_POSTGRES  official (postgres:15, default) or standin (docker/postgres-standin)
#   KTG_TORCH_BUILD     cpu (default) or cuda: which PyTorch the image gets
#   KTG_BUILD_CA        a CA bundle for pip behind a TLS-intercepting proxy (a build secret)
#   KTG_SMOKE_KEEP=1    leave the stack running at the end (default: `down -v`)
#
# It runs as the compose project `ktg-smoke`, so it never touches the volumes of
# a `ktg` stack; it publishes port 8000 like the real stack. It uses the secret
# files in docker/secrets/ when they exist, and otherwise makes (and removes) them.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=ktg-smoke
IMAGE=ktg:0.1.0
STANDIN_IMAGE=ktg-postgres-standin:15
BASE=http://127.0.0.1:8000
TORCH_BUILD="${KTG_TORCH_BUILD:-cpu}"
export KTG_TORCH_BUILD="$TORCH_BUILD"
# A fresh database password for this run only, in the environment (never on a command line).
POSTGRES_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export POSTGRES_PASSWORD
# Real-image study: Fashion-MNIST from the image's Debian package, a small subset.
STUDY_FASHION='{"name": "smoke-fashion", "nodes": 2, "trials": 2, "epochs": 2, "dataset": "fashionmnist",
  "train_size": 1000, "models": ["resnet20"], "target_model": "resnet20", "gates": ["through"]}'
# Long enough to be caught mid-trial twice; two retries allowed per trial.
STUDY_FAULTS='{"name": "smoke-faults", "nodes": 2, "trials": 8, "epochs": 8, "models": ["resnet20", "wrn16-1"],
  "target_model": "resnet20", "gates": ["through", "linear"], "max_retries": 2}'

# -- the tools ---------------------------------------------------------------------------

if [ -n "${KTG_SMOKE_COMPOSE:-}" ]; then
    read -r -a COMPOSE <<< "$KTG_SMOKE_COMPOSE"
elif docker info > /dev/null 2>&1 && docker compose version > /dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v podman-compose > /dev/null; then
    COMPOSE=(podman-compose)
elif podman compose version > /dev/null 2>&1; then
    COMPOSE=(podman compose)
else
    echo "smoke: no compose command found (docker compose, podman-compose or podman compose)" >&2
    exit 2
fi
if [ "${COMPOSE[0]}" = docker ]; then ENGINE=docker; else ENGINE=podman; fi
COMPOSE_FILES=(-f docker-compose.yml)
case "${KTG_SMOKE_POSTGRES:-official}" in
    official) ;;
    standin) COMPOSE_FILES+=(-f docker/postgres-standin/compose.yml) ;;
    *) echo "smoke: KTG_SMOKE_POSTGRES: got '${KTG_SMOKE_POSTGRES}'; allowed: official, standin" >&2; exit 2 ;;
esac

compose() { "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" --profile cpu "$@"; }

# What the engine and compose print goes here, and to the screen only when a step fails
# (podman without systemd warns about healthcheck timers on every start).
TOOL_LOG="$(mktemp)"
quiet() { "$@" >> "$TOOL_LOG" 2>&1; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

STARTED="$(now)"
SUMMARY=()
STEP_TITLE=""
STEP_START=""
begin() {
    STEP_TITLE="$1"
    STEP_START="$(now)"
    printf '\n==> %s\n' "$STEP_TITLE"
}
end() {
    local took
    took="$(since "$STEP_START")"
    printf '    ok, %s s\n' "$took"
    SUMMARY+=("$(printf '%8s s  %s' "$took" "$STEP_TITLE")")
}
say() { printf '    %s\n' "$*"; }

die() {
    printf '\nFAILED in step "%s": %s\n' "$STEP_TITLE" "$*" >&2
    printf '\n--- last lines of the engine and compose output ---\n' >&2
    tail -n 30 "$TOOL_LOG" >&2
    compose ps >&2 || true
    for svc in api ray-head-cpu ray-worker-cpu; do
        printf '\n--- last lines of %s ---\n' "$svc" >&2
        compose logs --tail 40 "$svc" >&2 || true
    done
    exit 1
}

# The containers of one service of this project (labels set by docker compose and podman-compose).
containers_of() {
    "$ENGINE" ps -a --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}'
}

# Healthy now? Podman runs healthchecks from systemd timers, which a machine
# without systemd lacks: there `healthcheck run` is the check itself.
healthy() {
    if [ "$ENGINE" = podman ]; then
        podman healthcheck run "$1" > /dev/null 2>&1
    else
        [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1")" = healthy ]
    fi
}

all_healthy() {
    local svc name
    for svc in postgres ray-head-cpu ray-worker-cpu api; do
        name="$(containers_of "$svc")"
        [ -n "$name" ] && healthy "$name" || return 1
    done
}

# wait_until SECONDS WHAT COMMAND...: poll every 2 s.
wait_until() {
    local limit="$1" what="$2" t0
    shift 2
    t0="$(now)"
    until "$@"; do
        if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            die "timed out after ${limit} s waiting for $what"
        fi
        sleep 2
    done
}

# -- HTTP, with the tenant's token ---------------------------------------------------------

http() {  # http METHOD PATH [BODY]: the response body; fails on a non-2xx status
    local args=(-fsS -X "$1" -H "Authorization: Bearer $TOKEN")
    [ $# -ge 3 ] && args+=(-H "Content-Type: application/json" --data "$3")
    curl "${args[@]}" "$BASE$2"
}

# json EXPRESSION: evaluate a Python expression over the JSON document `d` read from stdin.
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

study_state() { http GET "/v1/studies/$1" | json 'd["state"]'; }

study_over() {
    local state
    state="$(study_state "$1" 2> /dev/null)" || return 1
    case "$state" in
        succeeded) return 0 ;;
        failed|cancelled) die "study $1 ended $state: $(http GET "/v1/studies/$1" | json 'd.get("message")')" ;;
        *) return 1 ;;
    esac
}

# Trials running with at least one epoch recorded (so each has a checkpoint to resume from).
running_trials() {
    http GET "/v1/studies/$1/trials?limit=100" \
        | json '" ".join(str(t["number"]) for t in d["items"] if t["state"] == "running" and t["history"])'
}
mid_trial() {
    study_state "$1" | grep -qE '^(queued|running)$' || die "study $1 ended before the faults: $(study_state "$1")"
    [ -n "$(running_trials "$1")" ]
}

api_answers() { curl -fsS "$BASE/healthz" > /dev/null 2>&1; }

# -- secrets and teardown ------------------------------------------------------------------

MADE_SECRETS=()
for secret in api_tokens ray_auth_token; do
    if [ ! -s "docker/secrets/$secret" ]; then
        ( umask 022
          if [ "$secret" = api_tokens ]; then
              printf 'smoke:%s\n' "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
          else
              python3 -c 'import secrets; print(secrets.token_hex(32))'
          fi > "docker/secrets/$secret" )
        MADE_SECRETS+=("docker/secrets/$secret")
    fi
done
# The first token of the tokens file (lines of tenant:token, or comma-separated).
TOKEN="$(python3 -c 'import sys
for line in open(sys.argv[1]):
    for entry in line.split(","):
        tenant, sep, token = entry.strip().partition(":")
        if sep and token and not tenant.startswith("#"):
            print(token.strip()); raise SystemExit
' docker/secrets/api_tokens)"
mkdir -p "${KTG_DATASETS_HOST_DIR:-./datasets}"

teardown() {
    local rc=$?
    if [ "${KTG_SMOKE_KEEP:-0}" = 1 ]; then
        echo "smoke: KTG_SMOKE_KEEP=1, the stack stays up (${COMPOSE[*]} -p $PROJECT ... down -v)"
    else
        begin "tear down: compose down -v"
        quiet compose down -v || echo "    (down reported an error: $TOOL_LOG)"
        end
    fi
    for file in "${MADE_SECRETS[@]}"; do rm -f "$file"; done
    [ "$rc" = 0 ] && rm -f "$TOOL_LOG"
    if [ "$rc" = 0 ]; then
        printf '\nsmoke: passed in %s s (%s, %s, torch %s)\n' "$(since "$STARTED")" "${COMPOSE[*]}" \
            "postgres ${KTG_SMOKE_POSTGRES:-official}" "$TORCH_BUILD"
        printf '%s\n' "${SUMMARY[@]}"
    fi
}
trap teardown EXIT

# -- the run ---------------------------------------------------------------------------------

echo "smoke: ${COMPOSE[*]} ($("$ENGINE" --version)), project $PROJECT, torch $TORCH_BUILD"

begin "build $IMAGE (docker/Dockerfile, TORCH_BUILD=$TORCH_BUILD)"
build=("$ENGINE" build -f docker/Dockerfile --build-arg "TORCH_BUILD=$TORCH_BUILD" -t "$IMAGE")
[ -n "${KTG_BUILD_CA:-}" ] && build+=(--secret "id=ca_bundle,src=$KTG_BUILD_CA")
quiet "${build[@]}" . || die "image build failed (run: ${build[*]} .)"
say "$("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
end

if [ "${KTG_SMOKE_POSTGRES:-official}" = standin ]; then
    begin "build $STANDIN_IMAGE (Debian's postgresql-15)"
    quiet "$ENGINE" build -t "$STANDIN_IMAGE" docker/postgres-standin || die "stand-in build failed"
    end
fi

begin "compose up (profile cpu)"
quiet compose up -d --no-build || die "compose up failed"
end

begin "wait until every service is healthy"
wait_until 600 "postgres, ray-head-cpu, ray-worker-cpu and api to be healthy" all_healthy
end

begin "study 1: POST /v1/studies (Fashion-MNIST, 2 trials)"
FASHION="$(http POST /v1/studies "$STUDY_FASHION" | json 'd["id"]')" || die "POST refused"
say "study $FASHION"
end

begin "study 1: follow to succeeded"
wait_until 1800 "study $FASHION to succeed" study_over "$FASHION"
say "$(http GET "/v1/studies/$FASHION" | json '"finished %d/%d, best val acc %s" % (d["finished"], d["budget"], d["best_val_acc"])')"
end

begin "study 1: best graph and its SVG"
http GET "/v1/studies/$FASHION/best?k=1" | json 'd' > /dev/null || die "no best graph"
graph="$(http GET "/v1/studies/$FASHION/best/1.json")"
echo "$graph" | json 'd["format"]' | grep -qx 'ktg-graph/1' || die "the best graph is not a ktg-graph/1 file"
say "$(echo "$graph" | json '"%d nodes, %d edges, val acc %s" % (len(d["nodes"]), len(d["edges"]), d["meta"].get("val_acc"))')"
svg="$(http GET "/v1/studies/$FASHION/best/1.svg")"
case "$svg" in *"<svg"*"</svg>"*) say "SVG, ${#svg} bytes" ;; *) die "the SVG is not an SVG" ;; esac
end

begin "study 2: POST /v1/studies (digits, 8 trials) and wait for a trial in mid-run"
FAULTS="$(http POST /v1/studies "$STUDY_FAULTS" | json 'd["id"]')" || die "POST refused"
say "study $FAULTS"
wait_until 900 "a trial of study $FAULTS past its first epoch" mid_trial "$FAULTS"
say "running: trials $(running_trials "$FAULTS")"
end

begin "study 2: restart the API container"
quiet compose restart api || die "compose restart api failed"
wait_until 300 "the API to answer again" api_answers
wait_until 300 "the api container to be healthy" healthy "$(containers_of api)"
say "study $FAULTS is $(study_state "$FAULTS") after the restart"
end

begin "study 2: kill the Ray worker container in mid-trial"
wait_until 900 "a trial of study $FAULTS in mid-run" mid_trial "$FAULTS"
KILLED_DURING="$(running_trials "$FAULTS")"
worker="$(containers_of ray-worker-cpu)"
quiet "$ENGINE" kill "$worker" || die "could not kill $worker"
say "killed $worker while trials $KILLED_DURING ran"
end

begin "study 2: start the worker again"
# The restart policy may have started it already; starting a running container is a no-op.
quiet "$ENGINE" start "$worker" || die "could not start $worker again"
wait_until 300 "the new Ray worker to be healthy" healthy "$worker"
end

begin "study 2: follow to succeeded"
wait_until 2400 "study $FAULTS to succeed" study_over "$FAULTS"
end

begin "study 2: the killed trial was retried once, no trial is left running"
trials="$(http GET "/v1/studies/$FAULTS/trials?limit=100")"
echo "$trials" | KILLED="$KILLED_DURING" python3 -c '
import json, os, sys
items = json.load(sys.stdin)["items"]
killed = {int(n) for n in os.environ["KILLED"].split()}
retried = {t["number"]: t["retries"] for t in items if t["retries"]}
running = [t["number"] for t in items if t["state"] == "running"]
print("    trials: " + ", ".join("%d %s%s" % (t["number"], t["state"], " (retries %d)" % t["retries"] if t["retries"] else "")
                                for t in items))
problems = []
if not retried:
    problems.append("no trial shows a retry")
if any(n not in killed or r != 1 for n, r in retried.items()):
    problems.append(f"retried {retried}, expected retries 1 for trials running at the kill {sorted(killed)} only")
if running:
    problems.append(f"trials still running: {running}")
if problems:
    sys.exit("; ".join(problems))
' || die "the trials do not show the expected retry"
end
