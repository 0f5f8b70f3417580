"""Artifacts: models and LoRA adapters from S3, TOS, OBS, GCS, HuggingFace, HTTP(S) and PVCs.

Standard library only.  Layout, outside in:

    component.py    the component: routes + the ``adapter_artifacts`` service
    api.py          POST /v1/model/download, GET /v1/model/download/{id}, GET /v1/model/list
    adapters.py     the LoRA delegation seam (materialize / cleanup / status)
    jobs.py         download jobs run by the server
    cli.py          ``patio download``
    sources.py      URI kind -> Source (dispatch table over ``stores/``)
    targets.py      directories a caller names, confined to Patio's roots
    uri.py, settings.py, errors.py

    stores/         one module per remote store: s3.py (+ TOS/OBS dialects), gcs.py, hf.py and
                    modelscope.py (over hub.py, what the hubs share), http.py (single files),
                    local.py (absolute paths and pvc://)
    auth/           where credentials come from and how requests are signed: credentials.py
                    (request credentials, captured environment), secrets.py (mounted secrets),
                    aws.py (the S3 credentials chain, STS web identity), sigv4.py, rs256.py
                    (JWT for GCS service accounts)
    fetch/          one fetch for every store: run.py (list, plan, parallel ranged parts,
                    the manifest last) and what it is built from: plan.py, workers.py,
                    transfer.py, part_file.py, net.py (pooled blocking HTTP), retry.py,
                    egress.py, listing.py, manifest.py, verify.py, progress.py
"""
