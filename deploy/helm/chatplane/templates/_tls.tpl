{{/* Service identity: every gRPC server and client has a certificate of the platform's CA whose common name is its
     identity (what the servers' per-method access lists name: gateway, auth, conversation, inference, worker), from
     cert-manager (tls.certManager) or generated once by the chart (kept like the other generated Secrets), or an
     existing Secret per identity (tls.existingSecrets). Each Secret holds tls.crt, tls.key and ca.crt. */}}

{{/* The identity of a component: its `identity`, default its key; "" when it speaks no gRPC (neither serves gRPC nor
     calls a gRPC upstream). Dict {name, c}. */}}
{{- define "chatplane.identityOf" -}}
{{- if or (eq .c.protocol "grpc") .c.upstreams -}}
{{- .c.identity | default .name -}}
{{- end -}}
{{- end }}

{{/* The identities of the release, as JSON {identity: [DNS names its certificate carries]}: a server's certificate
     names its Service (short and qualified); every one names its identity (the inference callers reach replicas by
     address and check the name `inference`). */}}
{{- define "chatplane.tlsIdentities" -}}
{{- $root := . -}}
{{- $out := dict -}}
{{- $active := include "chatplane.activeComponents" . | fromJsonArray -}}
{{- range $name, $c := .Values.components -}}
{{- $id := include "chatplane.identityOf" (dict "name" $name "c" $c) -}}
{{- if and (has $name $active) $id -}}
{{- $names := get $out $id | default (list $id) -}}
{{- if eq $c.protocol "grpc" -}}
{{- $names = concat $names (include "chatplane.serviceDnsNames" (dict "root" $root "service" (include "chatplane.componentName" (dict "root" $root "name" $name))) | fromJsonArray) -}}
{{- end -}}
{{- $_ := set $out $id $names -}}
{{- end -}}
{{- end -}}
{{- if .Values.inference.enabled -}}
{{- $names := get $out "inference" | default (list "inference") -}}
{{- range $p := include "chatplane.inferencePools" . | fromJsonArray -}}
{{- $names = concat $names (include "chatplane.serviceDnsNames" (dict "root" $root "service" $p.fullname) | fromJsonArray) -}}
{{- end -}}
{{- $_ := set $out "inference" $names -}}
{{- end -}}
{{ toJson $out }}
{{- end }}

{{- define "chatplane.serviceDnsNames" -}}
{{- $ns := .root.Release.Namespace -}}
{{ toJson (list .service (printf "%s.%s" .service $ns) (printf "%s.%s.svc" .service $ns) (printf "%s.%s.svc.cluster.local" .service $ns)) }}
{{- end }}

{{/* The Secret holding an identity's certificate. Dict {root, identity}. */}}
{{- define "chatplane.tlsSecretName" -}}
{{- get (.root.Values.tls.existingSecrets | default dict) .identity | default (printf "%s-tls-%s" (include "chatplane.fullname" .root) .identity | trunc 63 | trimSuffix "-") -}}
{{- end }}

{{/* What a container that speaks gRPC gets: its identity's files and the settings naming them; a gRPC server also its
     plaintext health port (the kubelet's gRPC probes cannot speak TLS). With tls.enabled false: plaintext explicitly
     allowed (CHATPLANE_TLS_ALLOW_PLAINTEXT; a service mesh must then provide mutual TLS). Dict {root, identity}. */}}
{{- define "chatplane.tlsEnv" -}}
{{- $tls := .root.Values.tls -}}
{{- if and $tls.enabled .identity }}
- name: CHATPLANE_TLS_CERT_FILE
  value: {{ printf "%s/tls.crt" $tls.mountPath | quote }}
- name: CHATPLANE_TLS_KEY_FILE
  value: {{ printf "%s/tls.key" $tls.mountPath | quote }}
- name: CHATPLANE_TLS_CA_FILE
  value: {{ printf "%s/ca.crt" $tls.mountPath | quote }}
{{- else if not $tls.enabled }}
- name: CHATPLANE_TLS_ALLOW_PLAINTEXT
  value: "true"
{{- end }}
{{- end }}

{{- define "chatplane.tlsVolumes" -}}
{{- if and .root.Values.tls.enabled .identity }}
- name: tls
  secret:
    secretName: {{ include "chatplane.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "chatplane.tlsVolumeMounts" -}}
{{- if and .root.Values.tls.enabled .identity }}
- name: tls
  mountPath: {{ .root.Values.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The probe of a gRPC server: its own port without TLS, the plaintext health port with it. Dict {root, port}. */}}
{{- define "chatplane.grpcProbePort" -}}
{{- if .root.Values.tls.enabled }}{{ .root.Values.tls.healthPort }}{{ else }}{{ .port }}{{ end -}}
{{- end }}

{{/* Files from the chart's Secrets (components' secretFiles, `SETTING: <which>`): the setting names the mounted file.
     Dict {root, files, where}; `part` volumes, mounts or env. */}}
{{- define "chatplane.secretFiles" -}}
{{- $root := .root -}}
{{- range $env, $which := .files }}
{{- $ref := include "chatplane.chartSecretRef" (dict "root" $root "which" $which "where" (printf "%s.%s" $.where $env)) | fromYaml }}
{{- if eq $.part "volumes" }}
- name: secret-{{ $which }}
  secret:
    secretName: {{ $ref.name }}
    defaultMode: 0440
    items:
      - key: {{ $ref.key }}
        path: {{ $ref.key }}
{{- else if eq $.part "mounts" }}
- name: secret-{{ $which }}
  mountPath: /etc/chatplane/secrets/{{ $which }}
  readOnly: true
{{- else }}
- name: {{ $env }}
  value: {{ printf "/etc/chatplane/secrets/%s/%s" $which $ref.key | quote }}
{{- end }}
{{- end }}
{{- end }}
