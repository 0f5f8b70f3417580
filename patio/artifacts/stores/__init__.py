"""Remote stores: each turns a ``SourceSpec`` into ``RemoteFile`` rows and byte ranges.

s3.py      S3 ListObjectsV2 + ranged GetObject (also TOS, OBS, GCS interoperability)
gcs.py     GCS JSON API with OAuth2 tokens minted in pure Python
hf.py      HuggingFace Hub (revision, tree, resolve)
http.py    one file over HTTP(S)
local.py   absolute paths, file:// and pvc:// under the mount root
"""
