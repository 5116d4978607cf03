# Sourced by scripts/test and scripts/demo: installs what ferry's simulated hosts need on a fresh
# Debian machine. PostgreSQL 15 server binaries are expected at /usr/lib/postgresql/15/bin
# (override with FERRY_PG_BIN).

# ensure_venv DIR TOOL MODULE VERSION SPEC: a venv at DIR with TOOL in its bin/ and MODULE at VERSION,
# else SPEC installed into it with pip.
ensure_venv() {
  local venv="$1" tool="$2" module="$3" version="$4" spec="$5"
  if [ -x "$venv/bin/$tool" ] &&
    "$venv/bin/python" -c "import $module as m; assert m.__version__ == '$version'" 2>/dev/null; then
    return 0
  fi
  echo "installing $spec into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$spec"
}

# The ansible-core the inventory tests compare ferry with, in a venv under target/.
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_VENV="${FERRY_ANSIBLE_VENV:-target/ansible-venv}"
ensure_ansible() {
  ensure_venv "$ANSIBLE_VENV" ansible-inventory ansible.release "$ANSIBLE_CORE_VERSION" "ansible-core==$ANSIBLE_CORE_VERSION"
}

# The S3-compatible server the object-storage tests start (moto, real HTTP on loopback), with boto3
# for the tests' own looks into the bucket, in a venv under target/.
MOTO_VERSION=5.2.5
S3_VENV="${FERRY_S3_VENV:-target/s3-venv}"
ensure_s3() {
  ensure_venv "$S3_VENV" moto_server moto "$MOTO_VERSION" "moto[server]==$MOTO_VERSION"
}

ensure_deps() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v tar >/dev/null 2>&1 || missing+=(tar)
  # promtool and a Prometheus server for the metrics tests.
  { command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
  # The age CLI: the encryption tests follow the break-glass procedure with it.
  command -v age >/dev/null 2>&1 || missing+=(age)
  # python3 -m venv, for ansible-core and the S3 server.
  python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  local pg_bin="${FERRY_PG_BIN:-/usr/lib/postgresql/15/bin}"
  if [ ! -x "$pg_bin/initdb" ]; then
    echo "PostgreSQL server binaries not found in $pg_bin (set FERRY_PG_BIN)" >&2
    return 1
  fi
}
