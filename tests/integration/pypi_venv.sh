# Sourced by the tests that need a PyPI-only tool.
# pypi_venv VENV "IMPORTS" PACKAGE...: makes VENV (on Debian's python3, with
# its site packages: torch, numpy) holding PACKAGE... unless it already
# imports IMPORTS; when PyPI cannot be reached, says why and exits 77
# (ctest: skipped).
pypi_venv() {
  local venv=$1 imports=$2
  shift 2
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $imports" 2>/dev/null; then
    return 0
  fi
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  if ! timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check "$@" \
      > "$venv.log" 2>&1; then
    echo "SKIP: cannot install $* from PyPI into $venv:"
    tail -3 "$venv.log"
    rm -rf "$venv"
    exit 77
  fi
}
