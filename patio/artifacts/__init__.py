"""Artifacts: models and LoRA adapters from S3, TOS, OBS, GCS, HuggingFace, HTTP(S) and PVCs.

Standard library only.  Modules, outside in:

    component.py    the component: routes + the ``adapter_artifacts`` service
    api.py          POST /v1/model/download, GET /v1/model/download/{id}, GET /v1/model/list
    adapters.py     the LoRA delegation seam (materialize / cleanup / status)
    jobs.py         download jobs run by the server
    cli.py          ``patio download``
    sources.py      URI kind -> Source (dispatch table)
    s3.py, awsauth.py, sigv4.py     S3 and its dialects; credentials chain; the SigV4 signer
    gcs.py, rs256.py                GCS JSON API; RS256/JWT in pure Python
    hf.py, http.py, local.py        HuggingFace Hub; single HTTP files; local and pvc:// paths
    fetch.py        the one fetch engine (parallel ranged parts, resume, atomic files)
    listing.py, verify.py, progress.py, manifest.py   what it is built from
    net.py          blocking HTTP with pooled connections, timeouts and bounded retries
    uri.py, credentials.py, settings.py, errors.py
"""
