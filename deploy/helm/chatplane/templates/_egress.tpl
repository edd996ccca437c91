{{/* NetworkPolicy egress: what a workload may reach. Every one: DNS (networkPolicy.dnsTo) and, when configured, the
     OTLP collector. A component also: its gRPC upstreams' pods on their ports (every pool for `inference`, and the
     API server with `inference.discovery: kubernetes`), its database, Redis and Kafka (the in-chart pods, or any
     address in networkPolicy.externalTo on the external ones' ports). Dict {root, c (a component's values, or a dict
     with only `database` for a migrations Job; empty for the rest)}; a YAML list of egress rules. */}}
{{- define "chatplane.egressOf" -}}
{{- $root := .root -}}
{{- $c := .c | default dict -}}
{{- $np := $root.Values.networkPolicy -}}
{{- $rules := list (dict "to" $np.dnsTo "ports" (list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP"))) -}}
{{- $external := $np.externalTo | default list -}}
{{- range $up := $c.upstreams | default list -}}
{{- if eq $up "inference" -}}
{{- if $root.Values.inference.enabled -}}
{{- range $p := include "chatplane.inferencePools" $root | fromJsonArray -}}
{{- $sel := merge (include "chatplane.selectorLabels" (dict "root" $root "name" "inference") | fromYaml) (dict "chatplane.dev/inference-pool" $p.name) -}}
{{- $rules = append $rules (dict "to" (list (dict "podSelector" (dict "matchLabels" $sel))) "ports" (list (dict "port" (int $p.port) "protocol" "TCP"))) -}}
{{- end -}}
{{- if eq $root.Values.inference.discovery "kubernetes" -}}
{{- $rules = append $rules (include "chatplane.externalRule" (dict "to" $external "ports" $np.apiServerPorts) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $uc := get $root.Values.components $up -}}
{{- if and $uc $uc.enabled -}}
{{- $sel := include "chatplane.selectorLabels" (dict "root" $root "name" $up) | fromYaml -}}
{{- $rules = append $rules (dict "to" (list (dict "podSelector" (dict "matchLabels" $sel))) "ports" (list (dict "port" (int $uc.port) "protocol" "TCP"))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $c.database -}}
{{- if $root.Values.postgresql.enabled -}}
{{- $rules = append $rules (include "chatplane.storeRule" (dict "root" $root "name" "postgresql" "port" 5432) | fromJson) -}}
{{- else -}}
{{- $rules = append $rules (include "chatplane.externalRule" (dict "to" $external "ports" (list $root.Values.postgresql.external.port)) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- if $c.redisEnv -}}
{{- if $root.Values.redis.enabled -}}
{{- $rules = append $rules (include "chatplane.storeRule" (dict "root" $root "name" "redis" "port" 6379) | fromJson) -}}
{{- else -}}
{{- $rules = append $rules (include "chatplane.externalRule" (dict "to" $external "ports" (list $root.Values.redis.external.port)) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- if and (eq ($c.kafka | default false) true) (include "chatplane.kafkaBootstrap" $root) -}}
{{- if $root.Values.kafka.enabled -}}
{{- $rules = append $rules (include "chatplane.storeRule" (dict "root" $root "name" "kafka" "port" 9092) | fromJson) -}}
{{- else -}}
{{- $ports := list -}}
{{- range $server := splitList "," $root.Values.kafka.external.bootstrapServers -}}
{{- $ports = append $ports (int (regexFind "[0-9]+$" (trim $server) | default "9092")) -}}
{{- end -}}
{{- $rules = append $rules (include "chatplane.externalRule" (dict "to" $external "ports" (uniq $ports)) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- with $root.Values.observability.otlpEndpoint -}}
{{- $port := regexFind "[0-9]+$" (regexReplaceAll "/.*$" (regexReplaceAll "^[a-z]+://" . "") "") | default "4317" -}}
{{- $rules = append $rules (include "chatplane.externalRule" (dict "to" $external "ports" (list (int $port))) | fromJson) -}}
{{- end -}}
{{ toYaml $rules }}
{{- end }}

{{/* An egress rule to one of the in-chart stores. Dict {root, name, port}; JSON. */}}
{{- define "chatplane.storeRule" -}}
{{- $sel := include "chatplane.selectorLabels" (dict "root" .root "name" .name) | fromYaml -}}
{{ toJson (dict "to" (list (dict "podSelector" (dict "matchLabels" $sel))) "ports" (list (dict "port" (int .port) "protocol" "TCP"))) }}
{{- end }}

{{/* An egress rule to something outside the release: the peers `to` (none: any address) on `ports`. JSON. */}}
{{- define "chatplane.externalRule" -}}
{{- $ports := list -}}
{{- range $p := .ports }}{{ $ports = append $ports (dict "port" (int $p) "protocol" "TCP") }}{{ end -}}
{{- $rule := dict "ports" $ports -}}
{{- with .to }}{{ $_ := set $rule "to" . }}{{ end -}}
{{ toJson $rule }}
{{- end }}
