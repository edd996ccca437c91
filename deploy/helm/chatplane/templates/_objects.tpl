{{/* The objects of one workload (a component or an inference pool), each a named template over one description,
     the "workload": a dict made by chatplane.componentWorkload (_components.tpl) or chatplane.poolWorkload
     (_inference.tpl), with
       name            object name of the Deployment, Service, autoscaler and PDB
       component       app.kubernetes.io/component label
       selector        more selector labels (a pool's), may be empty
       replicas        absent when an autoscaler owns the count
       strategy        the Deployment's strategy
       pod             serviceAccountName, automountServiceAccountToken, terminationGracePeriodSeconds, annotations,
                       volumes, nodeSelector, tolerations, affinity
       container       the container spec
       service         {headless, ports} or absent
       hpa             an autoscaling/v2 HPA spec without scaleTargetRef, or absent
       keda            a KEDA ScaledObject spec without scaleTargetRef, or absent
       pdb             {maxUnavailable} or absent
     Every template takes a dict {root, w}. */}}

{{- define "chatplane.workloadSelector" -}}
{{ include "chatplane.selectorLabels" (dict "root" .root "name" .w.component) }}
{{- with .w.selector }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "chatplane.workloadLabels" -}}
{{ include "chatplane.componentLabels" (dict "root" .root "name" .w.component) }}
{{- with .w.selector }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "chatplane.objectMeta" -}}
metadata:
  name: {{ .w.name }}
  labels:
    {{- include "chatplane.workloadLabels" . | nindent 4 }}
{{- end }}

{{- define "chatplane.deployment" -}}
{{- $pod := .w.pod -}}
apiVersion: apps/v1
kind: Deployment
{{ include "chatplane.objectMeta" . }}
spec:
  {{- if hasKey .w "replicas" }}
  replicas: {{ .w.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "chatplane.workloadSelector" . | nindent 6 }}
  strategy:
    {{- toYaml .w.strategy | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "chatplane.workloadLabels" . | nindent 8 }}
      {{- with $pod.annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "chatplane.podCommon" (dict "root" .root "serviceAccountName" $pod.serviceAccountName "automount" $pod.automountServiceAccountToken) | nindent 6 }}
      terminationGracePeriodSeconds: {{ $pod.terminationGracePeriodSeconds }}
      containers:
        - {{- toYaml .w.container | nindent 10 }}
      volumes:
        {{- toYaml $pod.volumes | nindent 8 }}
      {{- with $pod.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pod.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pod.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "chatplane.workloadSelector" . | nindent 14 }}
{{- end }}

{{- define "chatplane.service" -}}
apiVersion: v1
kind: Service
{{ include "chatplane.objectMeta" . }}
spec:
  {{- if .w.service.headless }}
  {{- /* Headless: DNS returns every ready pod and the callers balance per request themselves. */}}
  clusterIP: None
  {{- else }}
  type: ClusterIP
  {{- end }}
  selector:
    {{- include "chatplane.workloadSelector" . | nindent 4 }}
  ports:
    {{- toYaml .w.service.ports | nindent 4 }}
{{- end }}

{{- define "chatplane.scaleTarget" -}}
scaleTargetRef:
  apiVersion: apps/v1
  kind: Deployment
  name: {{ .w.name }}
{{- end }}

{{- define "chatplane.hpa" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
{{ include "chatplane.objectMeta" . }}
spec:
  {{- include "chatplane.scaleTarget" . | nindent 2 }}
  {{- toYaml .w.hpa | nindent 2 }}
{{- end }}

{{- define "chatplane.scaledObject" -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
{{ include "chatplane.objectMeta" . }}
spec:
  {{- include "chatplane.scaleTarget" . | nindent 2 }}
  {{- toYaml .w.keda | nindent 2 }}
{{- end }}

{{- define "chatplane.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
{{ include "chatplane.objectMeta" . }}
spec:
  maxUnavailable: {{ .w.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "chatplane.workloadSelector" . | nindent 6 }}
{{- end }}

{{/* Every object of one workload, from its description rendered as YAML by `template` (dict {root, w: <yaml>}). */}}
{{- define "chatplane.workloadObjects" -}}
{{- $w := .w | fromYaml -}}
{{- if hasKey $w "Error" }}{{ fail (printf "internal: a workload description is not YAML: %s" $w.Error) }}{{ end -}}
{{- $ctx := dict "root" .root "w" $w }}
---
{{ include "chatplane.deployment" $ctx }}
{{- if $w.service }}
---
{{ include "chatplane.service" $ctx }}
{{- end }}
{{- if $w.hpa }}
---
{{ include "chatplane.hpa" $ctx }}
{{- end }}
{{- if $w.keda }}
---
{{ include "chatplane.scaledObject" $ctx }}
{{- end }}
{{- if $w.pdb }}
---
{{ include "chatplane.pdb" $ctx }}
{{- end }}
{{- end }}

{{/* A Deployment strategy, checked: a rolling update must keep a pod while it replaces the others (with maxSurge 0,
     maxUnavailable must stay below the fewest replicas). Dict {strategy, replicas (the fewest), where}. */}}
{{- define "chatplane.strategy" -}}
{{- $s := .strategy | default (dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 1 "maxUnavailable" 0)) -}}
{{- if eq ($s.type | default "RollingUpdate") "Recreate" -}}
{{- $s = dict "type" "Recreate" -}}
{{- else -}}
{{- $ru := $s.rollingUpdate | default dict -}}
{{- $surge := $ru.maxSurge | default 0 -}}
{{- $unavailable := $ru.maxUnavailable | default 0 -}}
{{- if and (eq (toString $surge) "0") (eq (toString $unavailable) "0") -}}
{{- fail (printf "%s: maxSurge and maxUnavailable cannot both be 0 (the rollout could never move)" .where) -}}
{{- end -}}
{{- if and (not (kindIs "string" $surge)) (not (kindIs "string" $unavailable)) (eq (int $surge) 0) (ge (int $unavailable) (int .replicas)) -}}
{{- fail (printf "%s: a rolling update with maxSurge 0 and maxUnavailable %d takes all %d replica(s) down at once: every upgrade would be an outage. Give maxSurge 1 (on GPUs: a spare GPU), more replicas, or type Recreate to accept it" .where (int $unavailable) (int .replicas)) -}}
{{- end -}}
{{- end -}}
{{ toYaml $s }}
{{- end }}
