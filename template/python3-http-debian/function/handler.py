def handle(event, context):
    return {"statusCode": 200, "body": "Hello from python3-http-debian"}
