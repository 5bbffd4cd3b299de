#!/usr/bin/env bash
# Print the URLs of the running tool-server replicas that docker/compose.yaml started.
#
#   bash docker/replica-urls.sh              # both services, as lines for an environment YAML:
#       # tools-http
#       tools_url: [http://127.0.0.1:32768, http://127.0.0.1:32770]
#       # tools-mcp
#       tools_url: [http://127.0.0.1:32769/mcp, http://127.0.0.1:32771/mcp]
#   bash docker/replica-urls.sh tools-http   # one service, comma-separated (for --tools-url)
#       http://127.0.0.1:32768,http://127.0.0.1:32770
#
# Works with Compose v2 (`docker compose`) and v1 (`docker-compose`). COMPOSE_FILE and
# COMPOSE_PROJECT_NAME select another file or project, as they do for Compose itself.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
compose_file=${COMPOSE_FILE:-$here/compose.yaml}

die() {
    echo "replica-urls.sh: $*" >&2
    exit 1
}

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    die "neither \`docker compose\` nor \`docker-compose\` is installed"
fi

# service -> the container port it serves on, and the path of its endpoint
declare -A port=([tools-http]=8080 [tools-mcp]=8081)
declare -A path=([tools-http]="" [tools-mcp]=/mcp)

urls_of() {
    local service=$1 id address
    local ids
    ids=$("${compose[@]}" -f "$compose_file" ps -q "$service") \
        || die "could not list the containers of $service"
    [ -n "$ids" ] || die "no $service container is running (docker compose up first)"
    for id in $ids; do
        # One line per published address; the compose file publishes on 127.0.0.1 only.
        address=$(docker port "$id" "${port[$service]}/tcp" | head -n 1)
        [ -n "$address" ] || die "container $id of $service publishes no port ${port[$service]}"
        echo "http://${address}${path[$service]}"
    done | sort -t: -k3 -n
}

if [ $# -gt 0 ]; then
    [ -n "${port[$1]+set}" ] || die "unknown service $1 (tools-http or tools-mcp)"
    urls_of "$1" | paste -sd, -
    exit 0
fi
for service in tools-http tools-mcp; do
    list=$(urls_of "$service" | paste -sd, - | sed 's/,/, /g')
    printf '# %s\ntools_url: [%s]\n' "$service" "$list"
done
