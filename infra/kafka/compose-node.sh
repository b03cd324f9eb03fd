#!/bin/bash
# One Apache Kafka node of the compose deployment (docker-compose.yml), in the
# shape of the local cluster (infra/kafka/cluster.py): broker and controller in
# one process, a quorum of the three nodes, clients and replication on SASL_SSL
# (SCRAM-SHA-512, the deployment's own certificate authority), replication
# factor 3 and min.insync.replicas 2. It writes the node's configuration from
# its environment, formats the storage once with the cluster id and the SCRAM
# users, and runs the node. tests/unit/test_compose.py holds it to the local
# cluster's configuration.
set -euo pipefail
: "${NODE_ID:?}" "${CLUSTER_ID:?}" "${BROKER_PASSWORD:?}" "${CLIENT_USER:?}" "${CLIENT_PASSWORD:?}"
host="kafka-${NODE_ID}"
keystore_password="$(cat /certs/keystore-password)"
config=/tmp/server.properties

cat > "${config}" <<PROPERTIES
process.roles=broker,controller
node.id=${NODE_ID}
controller.quorum.voters=1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093
controller.listener.names=CONTROLLER
listeners=BROKER://:9092,CONTROLLER://:9093
advertised.listeners=BROKER://${host}:9092
listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=BROKER
log.dirs=/var/lib/kafka/data
num.partitions=8
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
auto.create.topics.enable=false
unclean.leader.election.enable=false
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.broker.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="${BROKER_PASSWORD}";
ssl.keystore.type=PKCS12
ssl.keystore.location=/certs/${host}.p12
ssl.keystore.password=${keystore_password}
ssl.key.password=${keystore_password}
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.pem
ssl.endpoint.identification.algorithm=https
PROPERTIES

# What the health check connects with: the broker's own user, over TLS.
cat > /tmp/client.properties <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="${BROKER_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.pem
PROPERTIES

/opt/kafka/bin/kafka-storage.sh format --cluster-id "${CLUSTER_ID}" --config "${config}" --ignore-formatted \
  --add-scram "SCRAM-SHA-512=[name=broker,password=${BROKER_PASSWORD}]" \
  --add-scram "SCRAM-SHA-512=[name=${CLIENT_USER},password=${CLIENT_PASSWORD}]"
exec /opt/kafka/bin/kafka-server-start.sh "${config}"
