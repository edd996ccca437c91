{{/* The workload description (see _objects.tpl) of one component of .Values.components: a process started with
     `python -m chatplane.<service> <args...>`. `protocol: none` serves no port of its own (probes and the Service use
     its metrics port); `singleton` pins one pod (replicas 1, Recreate: never two at once). Dict {root, name, c}. */}}
{{- define "chatplane.componentWorkload" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $c := .c -}}
{{- $service := include "chatplane.serviceOf" (dict "name" $name "c" $c) -}}
{{- $prefix := printf "CHATPLANE_%s_" (upper $service) -}}
{{- $grpc := eq $c.protocol "grpc" -}}
{{- $serves := ne $c.protocol "none" -}}
{{- $portName := ternary "grpc" "http" $grpc -}}
{{- $metricsPort := int ($c.metrics.port | default 0) -}}
{{- if and (not $serves) (not $metricsPort) }}{{ fail (printf "components.%s: protocol none needs metrics.port (its probes use it)" $name) }}{{ end -}}
{{- $autoscaled := and $c.autoscaling $c.autoscaling.enabled -}}
{{- if and $c.singleton (or $autoscaled (ne (int $c.replicas) 1)) }}{{ fail (printf "components.%s is a singleton: replicas must be 1 and autoscaling off" $name) }}{{ end -}}
{{- $minReplicas := ternary (int $c.autoscaling.minReplicas) (int $c.replicas) (eq $autoscaled true) -}}
{{- $maxReplicas := ternary (int $c.autoscaling.maxReplicas) (int $c.replicas) (eq $autoscaled true) -}}
{{- $callsInference := has "inference" ($c.upstreams | default list) -}}
{{- $identity := include "chatplane.identityOf" (dict "name" $name "c" $c) -}}
{{- $tlsCtx := dict "root" $root "identity" $identity -}}
{{- $secretFiles := dict "root" $root "files" ($c.secretFiles | default dict) "where" (printf "components.%s.secretFiles" $name) -}}
{{- $probe := dict -}}
{{- if $grpc -}}
{{- $probe = dict "grpc" (dict "port" (int (include "chatplane.grpcProbePort" (dict "root" $root "port" $c.port)))) -}}
{{- else if not $serves -}}
{{- /* No port of its own: alive while its metrics endpoint answers (nothing routes requests to it). */ -}}
{{- $probe = dict "httpGet" (dict "path" $c.metrics.path "port" "metrics") -}}
{{- end -}}
name: {{ include "chatplane.componentName" (dict "root" $root "name" $name) }}
component: {{ $name }}
{{- if not $autoscaled }}
replicas: {{ $c.replicas }}
{{- end }}
strategy:
  {{- if $c.singleton }}
  type: Recreate
  {{- else }}
  {{- include "chatplane.strategy" (dict "strategy" $c.strategy "replicas" $minReplicas "where" (printf "components.%s.strategy" $name)) | nindent 2 }}
  {{- end }}
pod:
  {{- include "chatplane.callerPod" (dict "root" $root "callsInference" $callsInference) | nindent 2 }}
  {{- /* Longer than the service's own drain, plus the preStop pause. */}}
  terminationGracePeriodSeconds: {{ add (int $c.shutdownGraceSeconds) 15 }}
  annotations: {{ $c.podAnnotations | default dict | toJson }}
  volumes:
    {{- include "chatplane.scratchVolumes" $root | nindent 4 }}
    {{- include "chatplane.tlsVolumes" $tlsCtx | nindent 4 }}
    {{- include "chatplane.secretFiles" (merge (dict "part" "volumes") $secretFiles) | nindent 4 }}
  nodeSelector: {{ $c.nodeSelector | default dict | toJson }}
  tolerations: {{ $c.tolerations | default list | toJson }}
  affinity: {{ $c.affinity | default dict | toJson }}
container:
  name: {{ $name }}
  image: {{ include "chatplane.image" (dict "root" $root "repository" $c.image.repository "tag" $c.image.tag) }}
  imagePullPolicy: {{ $root.Values.global.imagePullPolicy }}
  args: {{ concat (list "python" "-m" (printf "chatplane.%s" $service)) ($c.args | default list) | toJson }}
  ports:
    {{- if $serves }}
    - name: {{ $portName }}
      containerPort: {{ $c.port }}
      protocol: TCP
    {{- end }}
    {{- if $metricsPort }}
    - name: metrics
      containerPort: {{ $metricsPort }}
      protocol: TCP
    {{- end }}
    {{- if and $grpc $root.Values.tls.enabled }}
    - name: health
      containerPort: {{ $root.Values.tls.healthPort }}
      protocol: TCP
    {{- end }}
  env:
    {{- include "chatplane.commonEnv" (dict "root" $root "name" $service "process" $name "metricsPort" $metricsPort "metricsEnv" $c.metrics.env "shutdownGraceSeconds" $c.shutdownGraceSeconds "kafka" $c.kafka) | nindent 4 }}
    {{- if $serves }}
    - name: {{ $prefix }}PORT
      value: {{ $c.port | quote }}
    {{- end }}
    {{- if $grpc }}
    {{- include "chatplane.connectionAgeEnv" (dict "prefix" $prefix "c" $c) | nindent 4 }}
    {{- if $root.Values.tls.enabled }}
    - name: {{ $prefix }}HEALTH_PORT
      value: {{ $root.Values.tls.healthPort | quote }}
    {{- end }}
    {{- end }}
    {{- include "chatplane.tlsEnv" $tlsCtx | nindent 4 }}
    {{- range $up := $c.upstreams | default list }}
    {{- if eq $up "inference" }}
    {{- include "chatplane.inferencePoolsEnv" $root | nindent 4 }}
    {{- else }}
    - name: {{ printf "%s%s_TARGET" $prefix (upper $up) }}
      value: {{ include "chatplane.grpcTarget" (dict "root" $root "name" $up) | quote }}
    {{- end }}
    {{- end }}
    {{- if $c.database }}
    {{- include "chatplane.databaseEnv" (dict "root" $root "name" $service "database" $c.database) | nindent 4 }}
    {{- if include "chatplane.ownsDatabase" (dict "name" $name "c" $c) }}
    - name: {{ $prefix }}AUTO_MIGRATE
      {{- /* Migrations run in the hook Job, except on the first install with the in-chart database. */}}
      value: {{ and $root.Values.postgresql.enabled $root.Release.IsInstall | ternary "true" (not $root.Values.migrations.enabled | toString) | quote }}
    {{- end }}
    {{- end }}
    {{- include "chatplane.secretFiles" (merge (dict "part" "env") $secretFiles) | nindent 4 }}
    {{- with $c.redisEnv }}
    {{- include "chatplane.redisEnv" (dict "root" $root "envNames" .) | nindent 4 }}
    {{- end }}
    {{- range $k, $v := $c.env }}
    - name: {{ $k }}
      value: {{ $v | toString | quote }}
    {{- end }}
  {{- if $probe }}
  startupProbe:
    {{- toYaml $probe | nindent 4 }}
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    {{- toYaml $probe | nindent 4 }}
    periodSeconds: {{ ternary 5 10 $grpc }}
    failureThreshold: {{ ternary 2 3 $grpc }}
  livenessProbe:
    {{- toYaml $probe | nindent 4 }}
    periodSeconds: 10
    timeoutSeconds: {{ ternary 3 5 $grpc }}
    failureThreshold: 3
  {{- else }}
  startupProbe:
    httpGet: {path: {{ $c.probes.livenessPath }}, port: http}
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    httpGet: {path: {{ $c.probes.readinessPath }}, port: http}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: {{ $c.probes.livenessPath }}, port: http}
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  {{- end }}
  {{- if $serves }}
  lifecycle:
    {{- /* Let endpoints and client resolvers drop the pod before it stops accepting. */}}
    preStop:
      sleep:
        seconds: 5
  {{- end }}
  resources:
    {{- toYaml $c.resources | nindent 4 }}
  securityContext:
    {{- include "chatplane.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    {{- include "chatplane.scratchVolumeMounts" $root | nindent 4 }}
    {{- include "chatplane.tlsVolumeMounts" $tlsCtx | nindent 4 }}
    {{- include "chatplane.secretFiles" (merge (dict "part" "mounts") $secretFiles) | nindent 4 }}
{{- if or $serves $metricsPort }}
service:
  {{- /* gRPC: headless, the callers balance per request; protocol none: only the metrics port, for scraping. */}}
  headless: {{ or $grpc (not $serves) }}
  ports:
    {{- if $serves }}
    - name: {{ $portName }}
      port: {{ $c.port }}
      targetPort: {{ $portName }}
      protocol: TCP
      {{- if $grpc }}
      appProtocol: grpc
      {{- end }}
    {{- end }}
    {{- if $metricsPort }}
    - name: metrics
      port: {{ $metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- end }}
{{- if $autoscaled }}
hpa:
  minReplicas: {{ $c.autoscaling.minReplicas }}
  maxReplicas: {{ $c.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
{{- end }}
{{- if and $c.pdb.enabled (gt $maxReplicas 1) }}
pdb:
  maxUnavailable: {{ $c.pdb.maxUnavailable }}
{{- end }}
{{- end }}

{{/* A gRPC server's connection aging. Dict {prefix, c (with maxConnectionAgeSeconds, maxConnectionAgeGraceSeconds)}. */}}
{{- define "chatplane.connectionAgeEnv" -}}
- name: {{ .prefix }}MAX_CONNECTION_AGE_SECONDS
  value: {{ .c.maxConnectionAgeSeconds | default 0 | quote }}
- name: {{ .prefix }}MAX_CONNECTION_AGE_GRACE_SECONDS
  value: {{ .c.maxConnectionAgeGraceSeconds | default 0 | quote }}
{{- end }}

{{/* `name` and `key` of a Secret the chart knows by a short name (components' secretFiles). Dict {root, which, where}. */}}
{{- define "chatplane.chartSecretRef" -}}
{{- if eq .which "jwt" -}}
name: {{ include "chatplane.jwtSecretName" .root }}
key: {{ .root.Values.jwt.secretKey }}
{{- else -}}
{{- fail (printf "%s: unknown chart secret %q (known: jwt)" .where .which) -}}
{{- end -}}
{{- end }}
