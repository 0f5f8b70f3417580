"""``python -m patio.app``: RoleBasedGroup Patio's documented command, which runs Patio.

RoleBasedGroup's sidecar (rolebasedgroup/inference-engine-runtime, README "Running Locally"
and its Dockerfile ``ENTRYPOINT ["python3", "-m", "patio.app"]``) is started this way; the
image puts ``patio.pyz`` on ``PYTHONPATH`` so the command finds this package.
"""

from patio.cli import run

if __name__ == "__main__":
    run(program="patio.app")
