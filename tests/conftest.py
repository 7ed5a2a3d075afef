pytest_plugins = ["tests.kafka_fixtures", "tests.spark_fixtures", "tests.redis_fixtures"]
