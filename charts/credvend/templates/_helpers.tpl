{{/*
Names and labels shared by every template. Resource names are capped at 63 characters (the
DNS-label limit that Services and label values impose) minus room for the longest suffix the
chart appends ("-leader").
*/}}

{{- define "credvend.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "credvend.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "credvend.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change for the life of a release: the Deployment's selector. */}}
{{- define "credvend.selectorLabels" -}}
app.kubernetes.io/name: {{ include "credvend.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "credvend.labels" -}}
helm.sh/chart: {{ include "credvend.chart" . }}
{{ include "credvend.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: credvend
{{- end }}

{{/* The webhook's Service; also a DNS name in the serving certificate. */}}
{{- define "credvend.serviceName" -}}
{{- include "credvend.fullname" . }}
{{- end }}

{{- define "credvend.serviceAccountName" -}}
{{- include "credvend.fullname" . }}
{{- end }}

{{/* Also the name the operator patches its CA into, so RBAC resourceNames uses it too. */}}
{{- define "credvend.webhookConfigName" -}}
{{- include "credvend.fullname" . }}
{{- end }}

{{- define "credvend.leaseName" -}}
{{- printf "%s-leader" (include "credvend.fullname" .) }}
{{- end }}

{{- define "credvend.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "credvend.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "credvend.certificateName" -}}
{{- printf "%s-webhook" (include "credvend.fullname" .) }}
{{- end }}

{{- define "credvend.issuerName" -}}
{{- printf "%s-selfsigned" (include "credvend.fullname" .) }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "credvend.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The agent image: its own repository/tag where set, else the operator's. */}}
{{- define "credvend.agentImage" -}}
{{- if or .Values.agent.image.repository .Values.agent.image.tag }}
{{- $repository := default .Values.image.repository .Values.agent.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.agent.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- else }}
{{- include "credvend.image" . }}
{{- end }}
{{- end }}

{{/* Namespaces the webhook never sees: its own (pods of the operator must never wait for
the operator) and kube-system, plus the user's list, without duplicates. */}}
{{- define "credvend.excludedNamespaces" -}}
{{- $namespaces := list "kube-system" .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
{{- $namespaces = append $namespaces . }}
{{- end }}
{{- toJson (uniq $namespaces) }}
{{- end }}
