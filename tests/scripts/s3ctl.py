#!/usr/bin/env python3
"""The tests' S3 client (boto3, from the S3 server's venv): sets up a user and a bucket on a fresh
server, and looks at or changes what ferry wrote, as an operator with the AWS SDK would.

  s3ctl.py ENDPOINT setup BUCKET            -> {"access_key_id": ..., "secret_access_key": ...}
  s3ctl.py ENDPOINT ls BUCKET [PREFIX]      -> {"key": size, ...}
  s3ctl.py ENDPOINT uploads BUCKET          -> [{"key": ..., "upload_id": ...}, ...]
  s3ctl.py ENDPOINT get BUCKET KEY          -> the object's bytes on stdout
  s3ctl.py ENDPOINT put BUCKET KEY          <- the object's bytes from stdin
  s3ctl.py ENDPOINT rm BUCKET KEY           (as a lifecycle rule or an operator would)
Credentials for all but setup come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import json
import sys

import boto3

endpoint, command, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
region = "us-east-1"


def client(service, **keys):
    return boto3.client(service, endpoint_url=endpoint, region_name=region, **keys)


if command == "setup":
    # The server authenticates only after its first three calls: these three.
    iam = client("iam", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="ferry")
    iam.put_user_policy(
        UserName="ferry",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="ferry")["AccessKey"]
    creds = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    client(
        "s3", aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"]
    ).create_bucket(Bucket=bucket)
    print(json.dumps(creds))
elif command == "ls":
    prefix = sys.argv[4] if len(sys.argv) > 4 else ""
    out = {}
    for page in client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["Size"]
    print(json.dumps(out))
elif command == "uploads":
    got = client("s3").list_multipart_uploads(Bucket=bucket)
    print(json.dumps([{"key": u["Key"], "upload_id": u["UploadId"]} for u in got.get("Uploads", [])]))
elif command == "get":
    body = client("s3").get_object(Bucket=bucket, Key=sys.argv[4])["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        sys.stdout.buffer.write(chunk)
elif command == "put":
    client("s3").put_object(Bucket=bucket, Key=sys.argv[4], Body=sys.stdin.buffer.read())
elif command == "rm":
    client("s3").delete_object(Bucket=bucket, Key=sys.argv[4])
else:
    sys.exit(f"unknown command {command}")
