{{/* Names ------------------------------------------------------------------------------------------------ */}}
{{- define "chatplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>" for a dict {root, name}. */}}
{{- define "chatplane.componentName" -}}
{{- printf "%s-%s" (include "chatplane.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chatplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------------------- */}}
{{- define "chatplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "chatplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chatplane
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component, for a dict {root, name}. */}}
{{- define "chatplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatplane.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "chatplane.componentLabels" -}}
{{ include "chatplane.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------------------------- */}}
{{/* A chatplane image for a dict {root, repository, tag}: registry prefix and a pinned tag, never latest. */}}
{{- define "chatplane.image" -}}
{{- $tag := .tag | default .root.Values.global.imageTag | default .root.Chart.AppVersion -}}
{{- if eq (toString $tag) "latest" }}{{ fail "image tag 'latest' is not allowed: pin a version" }}{{ end -}}
{{- if .root.Values.global.imageRegistry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" .root.Values.global.imageRegistry) .repository (toString $tag) }}
{{- else -}}
{{ printf "%s:%s" .repository (toString $tag) }}
{{- end -}}
{{- end }}

{{/* A third-party image {repository, tag}. */}}
{{- define "chatplane.thirdPartyImage" -}}
{{- if eq (toString .tag) "latest" }}{{ fail "image tag 'latest' is not allowed: pin a version" }}{{ end -}}
{{ printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* Security --------------------------------------------------------------------------------------------- */}}
{{- define "chatplane.podSecurityContext" -}}
{{ toYaml .Values.securityContext.pod }}
{{- end }}

{{- define "chatplane.containerSecurityContext" -}}
{{ toYaml .Values.securityContext.container }}
{{- end }}

{{/* The container security context with overrides (a third-party image's own user). Dict {root, overrides}. */}}
{{- define "chatplane.containerSecurityContextWith" -}}
{{- $sc := deepCopy .root.Values.securityContext.container -}}
{{- range $k, $v := .overrides }}{{ $_ := set $sc $k $v }}{{ end -}}
{{ toYaml $sc }}
{{- end }}

{{/* The pod fields every chatplane pod shares. Dict {root, serviceAccountName (default the chart's), automount (the
     API token; default false: only pods that call the API server get it)}. */}}
{{- define "chatplane.podCommon" -}}
serviceAccountName: {{ .serviceAccountName | default (include "chatplane.serviceAccountName" .root) }}
automountServiceAccountToken: {{ .automount | default false }}
enableServiceLinks: false
{{- with .root.Values.global.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ include "chatplane.podSecurityContext" .root | indent 2 }}
{{- end }}

{{/* Secrets ---------------------------------------------------------------------------------------------- */}}
{{- define "chatplane.jwtSecretName" -}}
{{- .Values.jwt.existingSecret | default (printf "%s-jwt" (include "chatplane.fullname" .)) }}
{{- end }}

{{- define "chatplane.postgresqlSecretName" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.postgresql.existingSecret) }}
{{- fail "postgresql.existingSecret is required with an external database (postgresql.enabled=false)" }}
{{- end }}
{{- .Values.postgresql.existingSecret | default (printf "%s-postgresql" (include "chatplane.fullname" .)) }}
{{- end }}

{{- define "chatplane.redisSecretName" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "chatplane.fullname" .)) }}
{{- end }}

{{/* A Secret value generated once: kept from the live Secret (lookup) on upgrades. Refused with `gitOps: true`: a
     renderer without the cluster would generate another on every render. Dict {root, secret, key, gen, value (the
     values key that names an existing Secret instead)}. */}}
{{- define "chatplane.keptSecretValue" -}}
{{- if .root.Values.gitOps -}}
{{- fail (printf "gitOps: the chart would generate the Secret %s, and a GitOps render (no cluster to look it up in) would generate it again on every sync. Create it beforehand and set %s" .secret .value) -}}
{{- end -}}
{{- $live := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $live $live.data (hasKey $live.data .key) -}}
{{ index $live.data .key }}
{{- else -}}
{{ .gen | b64enc }}
{{- end -}}
{{- end }}

{{/* Dependencies ----------------------------------------------------------------------------------------- */}}
{{- define "chatplane.postgresqlHost" -}}
{{- if .Values.postgresql.enabled -}}
{{ printf "%s-postgresql.%s.svc.cluster.local" (include "chatplane.fullname" .) .Release.Namespace }}
{{- else -}}
{{ required "postgresql.external.host is required when postgresql.enabled is false" .Values.postgresql.external.host }}
{{- end -}}
{{- end }}

{{- define "chatplane.postgresqlPort" -}}
{{- if .Values.postgresql.enabled }}5432{{ else }}{{ .Values.postgresql.external.port }}{{ end -}}
{{- end }}

{{/* The role a service connects as and its password's key in the PostgreSQL Secret: in-chart, the role of its
     database (it owns that database and nothing else); external, postgresql.username. Dict {root, database}; JSON. */}}
{{- define "chatplane.databaseRole" -}}
{{- if .root.Values.postgresql.enabled -}}
{{ toJson (dict "user" .database "key" (printf "%s-password" .database)) }}
{{- else -}}
{{ toJson (dict "user" .root.Values.postgresql.username "key" .root.Values.postgresql.secretKey) }}
{{- end -}}
{{- end }}

{{/* Environment of a service with a database: the password from its Secret, the URL built from it by Kubernetes'
     $(VAR) expansion, so that no password appears in the manifest. Dict {root, name, database}. */}}
{{- define "chatplane.databaseEnv" -}}
{{- $root := .root -}}
{{- $prefix := printf "CHATPLANE_%s_" (upper .name) -}}
{{- $role := include "chatplane.databaseRole" . | fromJson -}}
{{- $params := "" -}}
{{- if and (not $root.Values.postgresql.enabled) $root.Values.postgresql.external.params -}}
{{- $params = printf "?%s" $root.Values.postgresql.external.params -}}
{{- end -}}
- name: CHATPLANE_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chatplane.postgresqlSecretName" $root }}
      key: {{ $role.key }}
- name: {{ $prefix }}DATABASE_URL
  value: {{ printf "postgresql+asyncpg://%s:$(CHATPLANE_DB_PASSWORD)@%s:%v/%s%s" $role.user (include "chatplane.postgresqlHost" $root) (include "chatplane.postgresqlPort" $root) .database $params | quote }}
{{- end }}

{{/* The databases of the in-chart PostgreSQL (one per service that has one), as a JSON list. */}}
{{- define "chatplane.databases" -}}
{{- $databases := list -}}
{{- range $name, $c := .Values.components }}{{ if and $c.enabled $c.database }}{{ $databases = append $databases $c.database }}{{ end }}{{ end -}}
{{ toJson (uniq $databases | sortAlpha) }}
{{- end }}

{{- define "chatplane.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{ printf "%s-kafka.%s.svc.cluster.local:9092" (include "chatplane.fullname" .) .Release.Namespace }}
{{- else -}}
{{- /* Empty: no Kafka at all; the services keep their events in the outbox tables. */ -}}
{{ .Values.kafka.external.bootstrapServers }}
{{- end -}}
{{- end }}

{{- define "chatplane.redisEnv" -}}
{{- $root := .root -}}
{{- $host := "" -}}{{- $port := 6379 -}}{{- $scheme := "redis" -}}
{{- if $root.Values.redis.enabled -}}
{{- $host = printf "%s-redis.%s.svc.cluster.local" (include "chatplane.fullname" $root) $root.Release.Namespace -}}
{{- else -}}
{{- $host = required "redis.external.host is required when redis.enabled is false" $root.Values.redis.external.host -}}
{{- $port = $root.Values.redis.external.port -}}
{{- if $root.Values.redis.external.tls }}{{ $scheme = "rediss" }}{{ end -}}
{{- end -}}
{{- if or $root.Values.redis.enabled $root.Values.redis.existingSecret }}
- name: CHATPLANE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chatplane.redisSecretName" $root }}
      key: {{ $root.Values.redis.secretKey }}
{{- range $env := .envNames }}
- name: {{ $env }}
  value: {{ printf "%s://:$(CHATPLANE_REDIS_PASSWORD)@%s:%v/0" $scheme $host $port | quote }}
{{- end }}
{{- else }}
{{- range $env := .envNames }}
- name: {{ $env }}
  value: {{ printf "%s://%s:%v/0" $scheme $host $port | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The gRPC target of a component: the headless Service's DNS name (clients balance per request). The inference
     pools are reached through CHATPLANE_INFERENCE_POOLS instead (_inference.tpl). */}}
{{- define "chatplane.grpcTarget" -}}
{{- $c := required (printf "upstream %q is not a component" .name) (get .root.Values.components .name) -}}
{{ printf "dns:///%s.%s.svc.cluster.local:%v" (include "chatplane.componentName" .) .root.Release.Namespace $c.port }}
{{- end }}

{{/* Environment every chatplane container gets. Dict {root, name (the service: the CHATPLANE_<NAME>_ prefix),
     process (the trace service name; default name), metricsPort, metricsEnv (its variable; default
     <prefix>METRICS_PORT), shutdownGraceSeconds, environment, kafka (whether the service talks to Kafka)}. */}}
{{- define "chatplane.commonEnv" -}}
{{- $prefix := printf "CHATPLANE_%s_" (upper .name) -}}
- name: CHATPLANE_ENVIRONMENT
  value: {{ .environment | default .root.Values.global.environment | quote }}
- name: CHATPLANE_LOG_LEVEL
  value: {{ .root.Values.global.logLevel | quote }}
- name: CHATPLANE_DATA_DIR
  value: /var/lib/chatplane
- name: HOME
  value: /tmp
- name: {{ $prefix }}HOST
  value: "0.0.0.0"
{{- if .shutdownGraceSeconds }}
- name: {{ $prefix }}SHUTDOWN_GRACE_SECONDS
  value: {{ .shutdownGraceSeconds | quote }}
{{- end }}
{{- if .metricsPort }}
- name: {{ .metricsEnv | default (printf "%sMETRICS_PORT" $prefix) }}
  value: {{ .metricsPort | quote }}
{{- end }}
- name: {{ .root.Values.connections.kafkaEnv }}
  value: {{ ternary (include "chatplane.kafkaBootstrap" .root) "" (eq .kafka true) | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .process | default .name | quote }}
{{- with .root.Values.observability.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Writable scratch folders for a read-only root filesystem. */}}
{{- define "chatplane.scratchVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/chatplane
{{- end }}

{{- define "chatplane.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- end }}

{{/* The components that are rendered, as a JSON list of names: enabled, and for those that cannot run without
     Kafka (`requiresKafka`, e.g. the usage consumer) only when there are Kafka bootstrap servers. */}}
{{- define "chatplane.activeComponents" -}}
{{- $active := list -}}
{{- $kafka := include "chatplane.kafkaBootstrap" . -}}
{{- range $name, $c := .Values.components -}}
{{- if and $c.enabled (or (not $c.requiresKafka) (and $c.kafka $kafka)) -}}
{{- $active = append $active $name -}}
{{- end -}}
{{- end -}}
{{ toJson $active }}
{{- end }}

{{/* The service (Python package and settings prefix) of a component: its `service`, default its key. Dict {name, c}. */}}
{{- define "chatplane.serviceOf" -}}
{{- .c.service | default .name -}}
{{- end }}

{{/* Whether a component owns its database's schema (the migrations Job and AUTO_MIGRATE): the service itself, not
     its side processes (worker, consumer), which share the service's database. Dict {name, c}; "true" or "". */}}
{{- define "chatplane.ownsDatabase" -}}
{{- if and .c.database (eq (include "chatplane.serviceOf" .) .name) }}true{{ end -}}
{{- end }}

{{/* Components that call `target` (NetworkPolicy sources), as a list of names. Dict {root, target}. */}}
{{- define "chatplane.callersOf" -}}
{{- $callers := list -}}
{{- $active := include "chatplane.activeComponents" .root | fromJsonArray -}}
{{- range $name, $c := .root.Values.components -}}
{{- if and (has $name $active) (has $.target ($c.upstreams | default list)) -}}
{{- $callers = append $callers $name -}}
{{- end -}}
{{- end -}}
{{ toJson $callers }}
{{- end }}
