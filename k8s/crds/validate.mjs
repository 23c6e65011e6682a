// Validates custom resources against the CRD schemas compiled into the @kubernetes-models
// packages pinned in package.json / package-lock.json (see SOURCES.md).
// stdin: a JSON array of resources; stdout: a JSON array of {kind, name, checked, error}.
// Kinds with no schema here come back with checked: false.
import { readFileSync } from "node:fs";

const MODELS = {
  "kafka.strimzi.io/v1beta2/Kafka": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/Kafka",
  "kafka.strimzi.io/v1beta2/KafkaNodePool": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/KafkaNodePool",
  "kafka.strimzi.io/v1beta2/KafkaTopic": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/KafkaTopic",
  "kafka.strimzi.io/v1beta2/KafkaUser": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/KafkaUser",
  "monitoring.coreos.com/v1/PodMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor",
};

const docs = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const result = { kind: doc.kind, name: doc.metadata?.name, checked: false, error: null };
  if (MODELS[key]) {
    const module = await import(MODELS[key]);
    const Model = module[doc.kind];
    result.checked = true;
    try {
      new Model(doc).validate();
    } catch (err) {
      result.error = String(err.message || err);
    }
  }
  results.push(result);
}
process.stdout.write(JSON.stringify(results));
