"""One-shot of infra/compose.yaml: create the S3 buckets in $BUCKETS (comma-separated) on
$S3_ENDPOINT_URL if they do not exist yet. Idempotent, so `compose up` can rerun it."""

import os

import boto3
from botocore.exceptions import ClientError


def main() -> None:
    s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    for bucket in filter(None, (b.strip() for b in os.environ["BUCKETS"].split(","))):
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket {bucket}: exists")
        except ClientError:
            s3.create_bucket(Bucket=bucket)
            print(f"bucket {bucket}: created")


if __name__ == "__main__":
    main()
