"""Credentials and request signing for the stores; nothing here prints a secret.

credentials.py   a request's ``credentials`` object and the captured environment
secrets.py       credentials from a mounted Kubernetes secret (AIBrix's ``credentials_secret``)
aws.py           the S3 credentials chain (request, environment, STS web identity)
sigv4.py         AWS Signature Version 4, S3 flavour (sans-IO)
rs256.py         RS256 JWTs for Google service accounts (pure Python)
"""
