"""Credentials and request signing for the stores; nothing here prints a secret.

credentials.py   a request's ``credentials`` object and the captured environment
aws.py           the S3 credentials chain (request, environment, STS web identity)
sigv4.py         AWS Signature Version 4, S3 flavour (sans-IO)
rs256.py         RS256 JWTs for Google service accounts (pure Python)
"""
