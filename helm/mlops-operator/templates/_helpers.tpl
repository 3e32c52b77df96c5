{{/* Name of the chart (app.kubernetes.io/name). */}}
{{- define "mlops-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: resource name prefix, at most 63 characters. */}}
{{- define "mlops-operator.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "mlops-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mlops-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlops-operator
{{- end }}

{{/* Labels that select the operator pod (immutable in the Deployment). */}}
{{- define "mlops-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mlops-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlops-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mlops-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs on its own kinds and in the namespaces it watches (a ClusterRole when
cluster-wide, a Role per namespace otherwise). Each rule is the smallest set of verbs some code path
uses; README.md "RBAC" says which.
*/}}
{{- define "mlops-operator.namespacedRules" -}}
# kopf watches the three kinds (list, watch); the handlers read the live object (get); kopf's
# finalizer and bookkeeping annotations and the DriftMonitor's retrain request are merge patches.
- apiGroups: [mlops.dev]
  resources: [modeltrainings, modeldeployments, driftmonitors]
  verbs: [get, list, watch, patch]
# Everything the operator learns goes to the status subresource (merge patch); it never writes spec.
- apiGroups: [mlops.dev]
  resources: [modeltrainings/status, modeldeployments/status, driftmonitors/status]
  verbs: [patch]
# A ModelDeployment owns its SeldonDeployment with blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin runs, that needs update on the owner's finalizers.
- apiGroups: [mlops.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# kopf posts core/v1 Events (POST only; it never updates or patches them).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Compiled pipelines referenced by spec.pipeline.configMapRef.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
{{- if .Values.rbac.secrets.enabled }}
# Only the referenced key of spec.kfp.tokenSecretRef is read; no list or watch, so Secrets cannot be enumerated.
- apiGroups: [""]
  resources: [secrets]
  {{- with .Values.rbac.secrets.names }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: [get]
{{- end }}
{{- if .Values.rbac.trainingJobs }}
# ModelTraining backend job: one Job per run, created (or found again by its name), read and deleted
# (cancel, Replace, timeout); its Pods are listed for the failed run's termination message and start time.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end }}
{{- if .Values.rbac.seldon }}
# ModelDeployment backend seldon: one SeldonDeployment per ModelDeployment, read, created, patched and
# deleted by name;
# list (limit 1) tells a missing Seldon CRD from a missing object after a 404; list and watch let an idle
# ModelDeployment wait for Seldon's status changes instead of polling.
- apiGroups: [machinelearning.seldon.io]
  resources: [seldondeployments]
  verbs: [get, list, watch, create, patch, delete]
# When Seldon reports a failure with a generic message, the reason is read from its Pods
# (waiting reason and last termination message of the failing container).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# seldonRouting none: the Service named like the ModelDeployment that routes to every predictor's
# Pods (created, its selector and ports kept, deleted after a switch to a mesh or backend local).
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
{{- end }}
{{- end }}

{{/* The Service the Seldon executors post request logs to. */}}
{{- define "mlops-operator.seldonLoggerService" -}}
{{- printf "%s-seldon-logger" (include "mlops-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
