{{/* The inference pools: .Values.inference.pools, each laid over the `inference` block's other keys (maps merge, a
     pool's value wins, lists replace), with `servedModel` (the model name clients ask for) and `fullname` added; a
     JSON list. */}}
{{- define "chatplane.inferencePools" -}}
{{- $root := . -}}
{{- $defaults := omit .Values.inference "pools" "enabled" "discovery" "discoveryIntervalSeconds" -}}
{{- $pools := list -}}
{{- $seen := dict -}}
{{- range $i, $p := .Values.inference.pools -}}
{{- $pool := include "chatplane.overlay" (dict "base" $defaults "over" $p) | fromJson -}}
{{- $where := printf "inference.pools[%d] (%s)" $i ($pool.name | default "") -}}
{{- if not $pool.name }}{{ fail (printf "%s needs a name" $where) }}{{ end -}}
{{- $fullname := printf "%s-inference-%s" (include "chatplane.fullname" $root) $pool.name -}}
{{- if gt (len $fullname) 63 }}{{ fail (printf "%s: the object name %s is longer than 63 characters: a shorter pool name" $where $fullname) }}{{ end -}}
{{- $model := $pool.model.servedModelName | default (base $pool.model.path) -}}
{{- if hasKey $seen (printf "name/%s" $pool.name) }}{{ fail (printf "%s: two pools are named %q" $where $pool.name) }}{{ end -}}
{{- if hasKey $seen (printf "model/%s" $model) }}{{ fail (printf "%s: two pools serve the model %q (clients pick a pool by model)" $where $model) }}{{ end -}}
{{- $_ := set $seen (printf "name/%s" $pool.name) true -}}
{{- $_ := set $seen (printf "model/%s" $model) true -}}
{{- $_ := set $pool "servedModel" $model -}}
{{- $_ := set $pool "fullname" $fullname -}}
{{- $_ := set $pool "where" $where -}}
{{- $pools = append $pools $pool -}}
{{- end -}}
{{ toJson $pools }}
{{- end }}

{{/* `over` laid over `base`, recursively for maps; `over`'s value wins even when it is false, 0 or "" (sprig's
     merge functions keep the base's value then). Dict {base, over}; JSON. */}}
{{- define "chatplane.overlay" -}}
{{- $out := deepCopy .base -}}
{{- range $k, $v := .over -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $out $k)) -}}
{{- $_ := set $out $k (include "chatplane.overlay" (dict "base" (get $out $k) "over" $v) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{ toJson $out }}
{{- end }}

{{/* The one setting of every inference caller: CHATPLANE_INFERENCE_POOLS, a JSON list of {name, model, target,
     policy}, and how often DNS targets are resolved again. */}}
{{- define "chatplane.inferencePoolsEnv" -}}
{{- $root := . -}}
{{- if .Values.inference.enabled -}}
{{- $entries := list -}}
{{- range $p := include "chatplane.inferencePools" . | fromJsonArray -}}
{{- $target := printf "dns:///%s.%s.svc.cluster.local:%d" $p.fullname $root.Release.Namespace (int $p.port) -}}
{{- if eq $root.Values.inference.discovery "kubernetes" -}}
{{- $target = printf "kubernetes:///%s.%s:%d" $p.fullname $root.Release.Namespace (int $p.port) -}}
{{- end -}}
{{- $entries = append $entries (dict "name" $p.name "model" $p.servedModel "target" $target "policy" $p.policy) -}}
{{- end -}}
- name: CHATPLANE_INFERENCE_POOLS
  value: {{ toJson $entries | quote }}
- name: CHATPLANE_INFERENCE_DISCOVERY_INTERVAL_SECONDS
  value: {{ .Values.inference.discoveryIntervalSeconds | quote }}
{{- end -}}
{{- end }}

{{/* The ServiceAccount and token of a pod: the inference callers' own (allowed to watch EndpointSlices) with
     `inference.discovery: kubernetes`, else the chart's, without a token. Dict {root, callsInference}. */}}
{{- define "chatplane.callerPod" -}}
{{- if and .callsInference .root.Values.inference.enabled (eq .root.Values.inference.discovery "kubernetes") -}}
serviceAccountName: {{ include "chatplane.inferenceClientServiceAccount" .root }}
automountServiceAccountToken: true
{{- else -}}
serviceAccountName: {{ include "chatplane.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- end -}}
{{- end }}

{{- define "chatplane.inferenceClientServiceAccount" -}}
{{- printf "%s-inference-client" (include "chatplane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The model claim of a pool (source pvc): its name, and whether the chart creates it. */}}
{{- define "chatplane.modelClaimName" -}}
{{- .pool.model.pvc.claimName | default (printf "%s-model-%s" (include "chatplane.fullname" .root) .pool.name) -}}
{{- end }}

{{/* The workload description (see _objects.tpl) of one inference pool. Dict {root, pool}. */}}
{{- define "chatplane.poolWorkload" -}}
{{- $root := .root -}}
{{- $p := .pool -}}
{{- $gpu := $p.gpu.enabled -}}
{{- $preset := dict -}}
{{- if and $gpu $p.gpu.nodePool -}}
{{- $preset = required (printf "%s: inference.gpu.presets has no %q" $p.where $p.gpu.nodePool) (get $p.gpu.presets $p.gpu.nodePool) -}}
{{- end -}}
{{- $nodeSelector := merge (deepCopy ($p.nodeSelector | default dict)) ($preset.nodeSelector | default dict) -}}
{{- $tolerations := concat ($p.tolerations | default list) ($preset.tolerations | default list) -}}
{{- $resources := deepCopy $p.resources -}}
{{- if $gpu -}}
{{- $gpus := int $p.engine.tensorParallelSize -}}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $gpus) ($resources.limits | default dict)) -}}
{{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" $gpus) ($resources.requests | default dict)) -}}
{{- end -}}
{{- $metricsPort := int ($p.metrics.port | default 0) -}}
{{- $autoscaled := $p.autoscaling.enabled -}}
{{- $minReplicas := ternary (int $p.autoscaling.minReplicas) (int $p.replicas) $autoscaled -}}
{{- $maxReplicas := ternary (int $p.autoscaling.maxReplicas) (int $p.replicas) $autoscaled -}}
{{- if lt $minReplicas 1 }}{{ fail (printf "%s: at least one replica (scale to zero is not supported)" $p.where) }}{{ end -}}
{{- $strategy := include "chatplane.strategy" (dict "strategy" $p.strategy "replicas" $minReplicas "where" (printf "%s.strategy" $p.where)) | fromYaml -}}
{{- $model := $p.model -}}
{{- if eq $model.source "pvc" -}}
{{- if and (not $model.pvc.claimName) (not $model.pvc.create) }}{{ fail (printf "%s: model.source pvc needs model.pvc.claimName (an existing claim) or model.pvc.create" $p.where) }}{{ end -}}
{{- $surges := and (eq $strategy.type "RollingUpdate") (ne (toString ($strategy.rollingUpdate.maxSurge | default 0)) "0") -}}
{{- if and (has $model.pvc.accessMode (list "ReadWriteOnce" "ReadWriteOncePod")) (or (gt $maxReplicas 1) $surges) -}}
{{- fail (printf "%s: the model claim is %s, which one node (or one pod) mounts at a time, but the pool can run a second pod (up to %d replicas%s): use a ReadOnlyMany or ReadWriteMany claim, or one replica with strategy Recreate" $p.where $model.pvc.accessMode $maxReplicas (ternary ", and a surge pod in a rollout" "" $surges)) -}}
{{- end -}}
{{- else if eq $model.source "hostPath" -}}
{{- if not $model.hostPath.path }}{{ fail (printf "%s: model.source hostPath needs model.hostPath.path" $p.where) }}{{ end -}}
{{- end -}}
{{- if and $autoscaled (le $maxReplicas $minReplicas) }}{{ fail (printf "%s: autoscaling.maxReplicas must be above minReplicas" $p.where) }}{{ end -}}
name: {{ $p.fullname }}
component: inference
selector:
  chatplane.dev/inference-pool: {{ $p.name }}
{{- if not $autoscaled }}
replicas: {{ $p.replicas }}
{{- end }}
strategy:
  {{- toYaml $strategy | nindent 2 }}
pod:
  serviceAccountName: {{ include "chatplane.serviceAccountName" $root }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ add (int $p.shutdownGraceSeconds) 15 }}
  annotations: {{ $p.podAnnotations | default dict | toJson }}
  volumes:
    {{- include "chatplane.scratchVolumes" $root | nindent 4 }}
    {{- include "chatplane.tlsVolumes" (dict "root" $root "identity" "inference") | nindent 4 }}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ ternary $p.gpu.shmSize "1Gi" $gpu }}
    {{- if eq $model.source "pvc" }}
    - name: model
      persistentVolumeClaim:
        claimName: {{ include "chatplane.modelClaimName" (dict "root" $root "pool" $p) }}
        readOnly: true
    {{- else if eq $model.source "hostPath" }}
    - name: model
      hostPath:
        path: {{ $model.hostPath.path }}
        type: Directory
    {{- end }}
  nodeSelector: {{ $nodeSelector | toJson }}
  tolerations: {{ $tolerations | toJson }}
  affinity: {{ $p.affinity | default dict | toJson }}
container:
  name: inference
  image: {{ include "chatplane.image" (dict "root" $root "repository" (ternary $p.image.gpuRepository $p.image.cpuRepository $gpu) "tag" $p.image.tag) }}
  imagePullPolicy: {{ $root.Values.global.imagePullPolicy }}
  args: ["python", "-m", "chatplane.inference"]
  ports:
    - name: grpc
      containerPort: {{ $p.port }}
      protocol: TCP
    {{- if $metricsPort }}
    - name: metrics
      containerPort: {{ $metricsPort }}
      protocol: TCP
    {{- end }}
    {{- if $root.Values.tls.enabled }}
    - name: health
      containerPort: {{ $root.Values.tls.healthPort }}
      protocol: TCP
    {{- end }}
  env:
    {{- include "chatplane.commonEnv" (dict "root" $root "name" "inference" "metricsPort" $metricsPort "shutdownGraceSeconds" $p.shutdownGraceSeconds "kafka" false) | nindent 4 }}
    - name: CHATPLANE_INFERENCE_PORT
      value: {{ $p.port | quote }}
    {{- include "chatplane.connectionAgeEnv" (dict "prefix" "CHATPLANE_INFERENCE_" "c" $p) | nindent 4 }}
    {{- if $root.Values.tls.enabled }}
    - name: CHATPLANE_INFERENCE_HEALTH_PORT
      value: {{ $root.Values.tls.healthPort | quote }}
    {{- end }}
    {{- include "chatplane.tlsEnv" (dict "root" $root "identity" "inference") | nindent 4 }}
    - name: CHATPLANE_INFERENCE_MODEL_PATH
      value: {{ $model.path | quote }}
    - name: CHATPLANE_INFERENCE_SERVED_MODEL_NAME
      value: {{ $p.servedModel | quote }}
    {{- if $p.engine.maxModelLen }}
    - name: CHATPLANE_INFERENCE_MAX_MODEL_LEN
      value: {{ $p.engine.maxModelLen | quote }}
    {{- end }}
    - name: CHATPLANE_INFERENCE_MAX_NUM_SEQS
      value: {{ $p.engine.maxNumSeqs | quote }}
    - name: CHATPLANE_INFERENCE_MAX_WAITING
      value: {{ $p.engine.maxWaiting | quote }}
    - name: CHATPLANE_INFERENCE_DTYPE
      value: {{ $p.engine.dtype | quote }}
    - name: CHATPLANE_INFERENCE_ENFORCE_EAGER
      value: {{ $p.engine.enforceEager | toString | quote }}
    - name: CHATPLANE_INFERENCE_ENABLE_PREFIX_CACHING
      value: {{ $p.engine.enablePrefixCaching | toString | quote }}
    - name: CHATPLANE_INFERENCE_STREAM_INTERVAL_MS
      value: {{ $p.engine.streamIntervalMs | quote }}
    - name: CHATPLANE_INFERENCE_TOOL_CALL_PARSER
      value: {{ $p.engine.toolCallParser | quote }}
    {{- with $p.engine.chatTemplate }}
    - name: CHATPLANE_INFERENCE_CHAT_TEMPLATE
      value: {{ . | quote }}
    {{- end }}
    {{- if $gpu }}
    - name: CHATPLANE_INFERENCE_GPU_MEMORY_UTILIZATION
      value: {{ $p.engine.gpuMemoryUtilization | quote }}
    - name: CHATPLANE_INFERENCE_TENSOR_PARALLEL_SIZE
      value: {{ $p.engine.tensorParallelSize | quote }}
    {{- else }}
    - name: CHATPLANE_INFERENCE_KV_CACHE_GIB
      value: {{ $p.engine.kvCacheGiB | quote }}
    {{- end }}
    {{- with $p.engine.extraArgs }}
    - name: CHATPLANE_INFERENCE_EXTRA_ENGINE_ARGS
      value: {{ toJson . | quote }}
    {{- end }}
    - name: CHATPLANE_INFERENCE_CACHE_DIR
      value: /var/lib/chatplane/cache/vllm
    {{- /* Nothing is ever fetched from a model hub at run time. */}}
    - name: HF_HUB_OFFLINE
      value: "1"
    - name: TRANSFORMERS_OFFLINE
      value: "1"
    {{- range $k, $v := $p.env }}
    - name: {{ $k }}
      value: {{ $v | toString | quote }}
    {{- end }}
  startupProbe:
    grpc: {port: {{ include "chatplane.grpcProbePort" (dict "root" $root "port" $p.port) }}}
    periodSeconds: 10
    failureThreshold: {{ div (int $p.startupTimeoutSeconds) 10 }}
  readinessProbe:
    grpc: {port: {{ include "chatplane.grpcProbePort" (dict "root" $root "port" $p.port) }}}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    grpc: {port: {{ include "chatplane.grpcProbePort" (dict "root" $root "port" $p.port) }}}
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 4
  lifecycle:
    preStop:
      sleep:
        seconds: 5
  resources:
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- include "chatplane.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    {{- include "chatplane.scratchVolumeMounts" $root | nindent 4 }}
    {{- include "chatplane.tlsVolumeMounts" (dict "root" $root "identity" "inference") | nindent 4 }}
    - name: shm
      mountPath: /dev/shm
    {{- if ne $model.source "image" }}
    - name: model
      mountPath: {{ $model.path }}
      readOnly: true
      {{- if and (eq $model.source "pvc") $model.pvc.subPath }}
      subPath: {{ $model.pvc.subPath }}
      {{- end }}
    {{- end }}
service:
  {{- /* Headless: the callers resolve every replica and pick one per request. */}}
  headless: true
  ports:
    - name: grpc
      port: {{ $p.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if $metricsPort }}
    - name: metrics
      port: {{ $metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- if $autoscaled }}
{{- include "chatplane.poolAutoscaler" (dict "root" $root "pool" $p) }}
{{- end }}
{{- if and $p.pdb.enabled (gt $maxReplicas 1) }}
pdb:
  maxUnavailable: {{ $p.pdb.maxUnavailable }}
{{- end }}
{{- end }}

{{/* A pool scales on its queue depth, vLLM's `vllm:num_requests_waiting`: a KEDA ScaledObject with a Prometheus
     trigger (`keda:`), or an HPA on the per-pod custom metric served by prometheus-adapter (`hpa:`). Dict {root, pool}. */}}
{{- define "chatplane.poolAutoscaler" -}}
{{- $a := .pool.autoscaling -}}
{{- $behavior := dict "scaleDown" (dict "stabilizationWindowSeconds" (int $a.scaleDownStabilizationSeconds) "policies" (list (dict "type" "Pods" "value" 1 "periodSeconds" 120))) "scaleUp" (dict "stabilizationWindowSeconds" 0 "policies" (list (dict "type" "Pods" "value" 2 "periodSeconds" 60))) }}
{{- if eq $a.mode "keda" }}
keda:
  minReplicaCount: {{ $a.minReplicas }}
  maxReplicaCount: {{ $a.maxReplicas }}
  pollingInterval: 15
  cooldownPeriod: {{ $a.scaleDownStabilizationSeconds }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- toYaml $behavior | nindent 8 }}
  triggers:
    - type: prometheus
      metricType: AverageValue
      metadata:
        serverAddress: {{ $a.prometheusAddress | quote }}
        {{- /* Requests waiting in this pool's engine queues (its pods: <deployment>-<hash>-<id>); KEDA divides by
               the replica count. */}}
        query: {{ printf "sum(vllm:num_requests_waiting{namespace=%q,pod=~%q})" .root.Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]+" .pool.fullname) | quote }}
        threshold: {{ $a.targetQueueDepth | quote }}
{{- else }}
hpa:
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Pods
      pods:
        metric:
          name: {{ $a.adapterMetricName }}
        target:
          type: AverageValue
          averageValue: {{ $a.targetQueueDepth | quote }}
  behavior:
    {{- toYaml $behavior | nindent 4 }}
{{- end }}
{{- end }}
