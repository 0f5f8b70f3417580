"""Remote stores: each turns a ``SourceSpec`` into ``RemoteFile`` rows and byte ranges.

s3.py      S3 ListObjectsV2 + ranged GetObject (also TOS, OBS, GCS interoperability)
gcs.py     GCS JSON API with OAuth2 tokens minted in pure Python
hub.py     what the model hubs share: token only to its origin, JSON GETs, ranged redirected opens
hf.py      HuggingFace Hub (revision, tree, resolve)
modelscope.py  ModelScope Hub (the legacy file API the modelscope client uses)
http.py    one file over HTTP(S)
local.py   absolute paths, file:// and pvc:// under the mount root
"""
