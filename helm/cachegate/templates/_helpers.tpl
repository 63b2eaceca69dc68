{{/*
Expand the name of the chart.
*/}}
{{- define "cachegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
Truncated at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "cachegate.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "cachegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "cachegate.labels" -}}
helm.sh/chart: {{ include "cachegate.chart" . }}
{{ include "cachegate.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "cachegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cachegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Container image reference.
*/}}
{{- define "cachegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the Secret holding the admin token.
*/}}
{{- define "cachegate.adminTokenSecretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin" (include "cachegate.fullname" .)) }}
{{- end }}

{{/*
The listen addresses, from the one place each port is set (service.containerPort,
admin.port). The image sets CACHEGATE_LISTEN and CACHEGATE_ADMIN_LISTEN, and the
environment beats the file, so the Deployment sets both to these values too.
*/}}
{{- define "cachegate.listen" -}}
{{- printf "0.0.0.0:%v" .Values.service.containerPort }}
{{- end }}

{{- define "cachegate.adminListen" -}}
{{- printf "0.0.0.0:%v" .Values.admin.port }}
{{- end }}

{{/*
Fails on values that older chart versions read, naming where they went.
*/}}
{{- define "cachegate.checkRemovedValues" -}}
{{- if hasKey .Values "containerPorts" }}
{{- fail "containerPorts was removed: set service.containerPort (proxy) and admin.port (admin) instead" }}
{{- end }}
{{- if hasKey .Values.service "adminPort" }}
{{- fail "service.adminPort was removed: admin.port sets the admin port in the pod and on the Service" }}
{{- end }}
{{- end }}

{{/*
routes.yaml as mounted in the pod: the user's config with the listen addresses
forced to the container ports and, for Redis Sentinel or Cluster, the store target
taken from redis.*.
*/}}
{{- define "cachegate.config" -}}
{{- include "cachegate.checkRemovedValues" . }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $admin := get $config "admin" | default dict }}
{{- if hasKey $admin "token" }}
{{- fail "config.admin.token would be stored in a ConfigMap: use adminToken.value or adminToken.existingSecret instead" }}
{{- end }}
{{- $_ := set $config "listen" (include "cachegate.listen" .) }}
{{- $_ = set $admin "listen" (include "cachegate.adminListen" .) }}
{{- $_ = set $config "admin" $admin }}
{{- /* mode single: CACHEGATE_REDIS_URL selects Redis (the URL may sit in a Secret). */}}
{{- if and .Values.redis.enabled (ne .Values.redis.mode "single") }}
{{- $store := get $config "store" | default dict }}
{{- $redis := get $store "redis" | default dict }}
{{- $redis = omit $redis "url" "cluster" "sentinel" }}
{{- $_ = set $store "backend" "redis" }}
{{- if eq .Values.redis.mode "sentinel" }}
{{- if not .Values.redis.sentinel.nodes }}
{{- fail "redis.mode sentinel needs redis.sentinel.nodes (and redis.sentinel.master)" }}
{{- end }}
{{- $_ = set $redis "sentinel" (dict "master" (required "redis.sentinel.master is required" .Values.redis.sentinel.master) "nodes" .Values.redis.sentinel.nodes) }}
{{- else if eq .Values.redis.mode "cluster" }}
{{- if not .Values.redis.cluster.nodes }}
{{- fail "redis.mode cluster needs redis.cluster.nodes (a few seed nodes)" }}
{{- end }}
{{- $_ = set $redis "cluster" .Values.redis.cluster.nodes }}
{{- end }}
{{- $_ = set $store "redis" $redis }}
{{- $_ = set $config "store" $store }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
PromQL label matchers for this release's series.
*/}}
{{- define "cachegate.promSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q,namespace=%q" (include "cachegate.fullname" .) .Release.Namespace) }}
{{- end }}
