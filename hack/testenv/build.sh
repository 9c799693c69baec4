#!/usr/bin/env bash
# Build the pinned binaries of the local test cluster from the Go module proxy.
#
# Each subdirectory (kubernetes, etcd, helm, nats, prometheus, oidc) is a Go module whose go.mod/go.sum pin one
# upstream release; its `tool` directives name the commands to build (oidc's is its own main.go, a
# small program around the pinned OpenID Provider library). Binaries go to a per-user
# cache keyed by the pins, so a second run builds nothing. The last line printed on stdout is
# the directory that holds all of them (progress goes to stderr).
#
#   hack/testenv/build.sh            build what is missing, print the bin directory
#   hack/testenv/build.sh --print    print the bin directory, fail if anything is missing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${COMPOZY_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compozy-testenv}
mode=${1:-build}

log() { printf '[testenv] %s\n' "$*" >&2; }

# component -> binaries it must produce
declare -A binaries=(
  [kubernetes]="kube-apiserver kube-controller-manager kube-scheduler kubectl"
  [etcd]="etcd"
  [helm]="helm"
  [nats]="nats-server"
  [prometheus]="promtool"
  [oidc]="oidc"
)
components=(etcd nats kubernetes helm prometheus oidc)
declare -A hint=([kubernetes]="; the first build takes about 5 minutes on 2 cores")
# `go build tool` names a binary after its package; these are renamed to what people type.
declare -A rename=([etcd]="server:etcd")
# build tags: promtool checks rules only, so no service discovery plugin (AWS, Azure, GCP, ...) is built
declare -A tags=([prometheus]="remove_all_sd")

pin() { # the version a module pins for $2, read from its go.mod
  awk -v m="$2" '$1 == "require" && $2 == m {print $3} $1 == m && $2 ~ /^v/ {print $2}' \
    "$here/$1/go.mod" | head -n1
}

# The cache key covers the pins, the module's own sources and the link flags, so changing any rebuilds.
key_of() {
  { cat "$here/$1/go.mod" "$here/$1/go.sum"; find "$here/$1" -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0r cat
    ldflags_of "$1"; [ -z "${tags[$1]:-}" ] || echo "tags=${tags[$1]}"; } |
    sha256sum | cut -c1-12
}

ldflags_of() {
  case $1 in
    kubernetes)
      local v; v=$(pin kubernetes k8s.io/kubernetes); local minor=${v#v1.}; minor=${minor%%.*}
      local f="-s -w"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
        f+=" -X $p.buildDate=1970-01-01T00:00:00Z"
      done
      echo "$f" ;;
    helm)
      local v; v=$(pin helm helm.sh/helm/v3)
      local k; k=$(awk '$1 == "k8s.io/client-go" {print $2}' "$here/helm/go.mod"); k=${k#v0.}; k=${k%%.*}
      echo "-s -w -X helm.sh/helm/v3/internal/version.version=$v" \
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k" \
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k" ;;
    *) echo "-s -w" ;;
  esac
}

require_go() {
  local need; need=$(awk '$1 == "go" {print $2}' "$here"/*/go.mod | sort -V | tail -n1)
  if ! command -v go >/dev/null 2>&1; then
    log "Go $need or newer is needed to build the local cluster (kube-apiserver, etcd, helm, nats-server)."
    log "Install it (e.g. your distribution's golang package, or the official tarball) and put 'go' on PATH."
    exit 3
  fi
  local have; have=$(GOTOOLCHAIN=local go env GOVERSION); have=${have#go}
  if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    log "Go $have is too old: the pinned modules need Go $need or newer. Install a newer Go."
    exit 3
  fi
}

all_key=""
missing=()
for c in "${components[@]}"; do
  k=$(key_of "$c"); all_key+="$c-$k "
  for b in ${binaries[$c]}; do
    [ -x "$cache/$c-$k/$b" ] || { missing+=("$c"); break; }
  done
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$mode" = "--print" ]; then
    log "not built yet: ${missing[*]} (run hack/testenv/build.sh)"
    exit 1
  fi
  require_go
  for c in "${missing[@]}"; do
    k=$(key_of "$c"); out="$cache/$c-$k"; tmp="$out.tmp.$$"
    log "building $c (${binaries[$c]}) into $out${hint[$c]:-}"
    start=$(date +%s)
    rm -rf "$tmp"; mkdir -p "$tmp"
    (cd "$here/$c" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -tags "${tags[$c]:-}" -ldflags "$(ldflags_of "$c")" -o "$tmp/" tool)
    if [ -n "${rename[$c]:-}" ]; then mv "$tmp/${rename[$c]%%:*}" "$tmp/${rename[$c]##*:}"; fi
    rm -rf "$out"; mv "$tmp" "$out"
    log "built $c in $(( $(date +%s) - start ))s"
  done
fi

# One directory with every binary, named after the combined pins.
bin="$cache/bin-$(echo "$all_key" | sha256sum | cut -c1-12)"
if [ ! -d "$bin" ]; then
  mkdir -p "$bin.tmp.$$"
  for c in "${components[@]}"; do
    for b in ${binaries[$c]}; do ln -sf "../$c-$(key_of "$c")/$b" "$bin.tmp.$$/$b"; done
  done
  mv -T "$bin.tmp.$$" "$bin" 2>/dev/null || rm -rf "$bin.tmp.$$"
fi
echo "$bin"
